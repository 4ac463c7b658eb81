"""The one exception type a user's mistake raises: its message is a single line that says what to change."""


class UserInputError(ValueError):
    """Bad input from the user (a path, a weight, a prompt, a config value), never a bug in the engine.

    The command line prints its message alone, without a stack trace.
    """
