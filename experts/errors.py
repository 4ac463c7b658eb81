"""The one exception type a user's mistake raises: its message is a single line that says what to change."""


class UserInputError(ValueError):
    """Bad input from the user (a path, a weight, a prompt, a config value), never a bug in the engine.

    The command line prints its message alone, without a stack trace. A value quoted in it (a tensor's or a
    config's repr) may span lines: the message is kept on one.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def first_line(err: BaseException) -> str:
    """The first line of an error's message (and the next, where the first only introduces it: 'Error
    loading X:'), or its type's name when it has none: what a one-line message quotes of a library's error."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]


def check_whole(label: str, value: object, minimum: int, hint: str = "", maximum: int | None = None) -> None:
    """Refuse anything but an int in [minimum, maximum] (a bool, a float such as 2.5, text): '{label}={value}
    must be a whole number >= {minimum}'."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(f"{label}={value!r} must be a whole number >= {minimum}{hint}")
    if maximum is not None and value > maximum:
        raise UserInputError(f"{label}={value!r} must be a whole number <= {maximum}{hint}")
