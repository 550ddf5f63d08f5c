"""The one exception type for user errors: the CLI prints its message on one line and exits 1."""


class FerkitError(Exception):
    """A problem with the user's input (paths, data, arguments, checkpoints), not a bug."""
