"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class EdgecraftError(Exception):
    """A problem with the user's input or environment, stated so that the user can fix it."""
