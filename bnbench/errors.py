"""Errors the CLI turns into one line on stderr and an exit code, never a traceback."""


class UsageError(Exception):
    """Bad input from the user (config, option, path): exit code 2, nothing created or changed."""

    exit_code = 2
