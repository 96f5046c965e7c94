"""User-facing errors: a short message that names the bad value and the fix, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment; the CLI prints it and exits with code 2."""
