"""The exception types for what users cause: the CLI prints each on one line.

FerkitError: a problem with the user's input (paths, data, arguments, checkpoints, a full disk),
not a bug; exit status 1. Interrupted: Ctrl-C after the command saved what it could; the message
says what was kept and how to go on; exit status 130.
"""


class FerkitError(Exception):
    """A problem with the user's input (paths, data, arguments, checkpoints), not a bug."""


class Interrupted(Exception):
    """Ctrl-C, after the command wrote what it had; the message says what was kept."""
