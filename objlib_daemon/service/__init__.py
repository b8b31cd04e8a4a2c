"""Install objlibd as a systemd user unit or a launchd agent, from the repo's templates.

Why rendered, not copied: a service runs with no shell, no venv activation and
often another environment, so the unit must name the exact interpreter that
has objlibd installed, the config file and the state dir this user resolved.
The templates (systemd/, launchd/) hold every other decision with its reason.

Nothing here runs a command in a dry run. Where the service manager exists but
cannot be reached (systemd installed but not PID 1, a shell without a user
bus) the files are written and the enable/start commands printed instead.

    templates.py  the shipped templates, the resolved Context, placeholder filling
    systemd.py    the Linux user unit and its mount-bound drop-in: render, plan, query
    launchd.py    the macOS agents (daemon or sync-on-mount): render, plan, query
    steps.py      Step, Plan, apply(): the only place files are written or commands run
    manager.py    which manager, is it reachable, and install/uninstall/status for either
"""
