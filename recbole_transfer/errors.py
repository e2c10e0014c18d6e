"""User-facing errors: each carries one line that says what is wrong and what to do.

The command lines print them without a traceback (``report``) and exit with status 2.
"""

import sys


class UserInputError(ValueError):
    """Bad input from the user (command line, config, data files)."""


def report(err):
    """Print ``err`` as the command lines do (one line on stderr) and return their exit status, 2."""
    print(f"error: {err}", file=sys.stderr)
    return 2
