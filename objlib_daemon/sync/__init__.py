"""The engine: planner (disk vs row → action), applier (executes one path), passes."""
