"""The commands: typed functions that parse, validate and hand over to the layers below (app.py), and
what the terminal shows (display.py)."""

import sys

from bnbench.cli.streams import reopen_closed_descriptors

reopen_closed_descriptors()  # before display.py asks sys.stdout whether it is a terminal (`bnbench ... >&-`)


def main() -> None:
    """The `bnbench` script: `app.main`, after its imports (a third of a second); a Ctrl-C during them ends
    with 130 and no traceback, as a Ctrl-C later does."""
    try:
        from bnbench.cli.app import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()
