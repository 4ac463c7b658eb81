"""What the evaluation commands share: argument types, the output folder's check, and one-line user errors."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from experts.errors import UserInputError


def positive_int(text: str) -> int:
    """argparse type for counts: 0 prompts would only fail deep inside the dataset builder."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1")
    return value


def output_folder(path: Path) -> Path:
    """``path``, created and shown writable before any evaluation, so that minutes of work are not lost to
    the last write."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserInputError(f"--out {path}: cannot write there ({reason}); give a folder you can write") from None
    return path


@contextmanager
def user_errors() -> Iterator[None]:
    """A UserInputError ends the command with its one-line message and exit code 2, as ``proxy-compose`` does."""
    try:
        yield
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
