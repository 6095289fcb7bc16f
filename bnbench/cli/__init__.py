"""The commands: typed functions that parse, validate and hand over to the layers below (app.py), and
what the terminal shows (display.py)."""
