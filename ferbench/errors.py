"""User-facing errors: one line, no traceback, exit code 2."""


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
