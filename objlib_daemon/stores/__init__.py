"""The remote side: one store protocol, two backends (embedded `local`, `gemini`)."""
