"""User-facing errors: one line, no traceback, exit code 2."""

from typing import Any


class FerbenchError(Exception):
    """Bad input (spec, data file, checkpoint, option) described in one line for the user."""

    exit_code = 2


class JobFailed(Exception):
    """A job stopped for a recorded reason (divergence, crash); the rest of the spec continues."""


def first_line(e: BaseException, limit: int = 200, last: bool = False) -> str:
    """One line of an exception for a one-line message: its first (or `last`) non-empty line, cut
    to `limit` characters, or the exception's type name when it says nothing."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = text.splitlines()
    return (lines[-1] if last else lines[0])[:limit]


def shown(value: Any) -> str:
    """A value for an error line: repr, cut to 60 characters, one line; an integer too long for Python
    to print (past 4,300 digits) by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 10_000:
        return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
    try:
        text = repr(value)
    except ValueError:
        return f"an unprintable {type(value).__name__}"
    text = text.replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(text: str) -> str:
    """`text` with its line breaks and other control characters written as escapes (a newline as
    \\n), so that a value read from a file can never split a one-line message.

    >>> one_line("metrics.json: test.a\\nb: field 'accuracy' missing")
    "metrics.json: test.a\\\\nb: field 'accuracy' missing"
    """
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
