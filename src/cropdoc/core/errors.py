"""Errors a user can cause. The CLI prints their message as one line, without a traceback."""


class UserError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


def one_line(exc: BaseException | str, limit: int = 160) -> str:
    """A library's error text as one line of at most ``limit`` characters (line breaks and
    runs of spaces collapsed, the rest cut at a word), for a message of ours to quote."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."
