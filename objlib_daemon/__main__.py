"""`python -m objlib_daemon` is `objlibd`."""

from objlib_daemon.cli import main

main()
