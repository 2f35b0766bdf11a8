"""User-facing errors: one line, no traceback, exit code 2."""


class FerbenchError(Exception):
    """Bad input (spec, data file, checkpoint, option) described in one line for the user."""

    exit_code = 2


class JobFailed(Exception):
    """A job stopped for a recorded reason (divergence, crash); the rest of the spec continues."""
