"""Errors a user can cause. The CLI prints their message as one line, without a traceback."""


class UserError(Exception):
    """A problem with the user's input or environment; the message says what to do."""
