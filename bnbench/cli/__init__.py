"""The commands: typed functions that parse, validate and hand over to the layers below (app.py), and
what the terminal shows (display.py)."""

from bnbench.cli.streams import reopen_closed_descriptors

reopen_closed_descriptors()  # before display.py asks sys.stdout whether it is a terminal (`bnbench ... >&-`)
