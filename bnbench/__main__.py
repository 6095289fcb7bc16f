import os
import sys

# `python -m bnbench` puts the current folder first on the import path; the `bnbench` script does not.
# Neither keeps it: a file in a folder of received runs must never shadow a module bnbench imports. A plugin
# in the current folder is still found by run, sweep and check (plugins.py adds the folder for them).
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]

from bnbench.cli import main  # noqa: E402

main()
