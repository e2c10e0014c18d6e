"""User-facing errors: each carries one line that says what is wrong and what to do.

``run_recbole_transfer.py`` prints them without a traceback and exits with status 2.
"""


class UserInputError(ValueError):
    """Bad input from the user (command line, config, data files)."""
