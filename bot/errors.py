"""User-facing error classes.

Anything derived from `UserFacingError` carries a message written for the person who sent the request; the
Discord layer shows it as-is (ephemerally) and the CLI prints it. Every other exception is a bug or an outage
and is logged with its traceback instead.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """An error whose message is safe and useful to show to the requesting user."""

    code = "error"  # a short reason recorded in the usage log

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(UserFacingError):
    """An option value is out of range or malformed."""

    code = "invalid_options"


class InvalidImage(UserFacingError):
    """An attached image or mask cannot be used."""

    code = "invalid_image"


class QueueFull(UserFacingError):
    """The global queue cap is reached."""

    code = "queue_full"


class TooManyPending(UserFacingError):
    """The user already has as many jobs waiting as they may."""

    code = "too_many_pending"


class ShuttingDown(UserFacingError):
    """The executor no longer accepts or runs work because the bot is stopping."""

    code = "shutting_down"


class JobCancelled(UserFacingError):
    """The job was cancelled before it ran."""

    code = "cancelled"


class GenerationFailed(UserFacingError):
    """The pipeline failed on this job (bad output, out of memory, timeout) after isolating it from others."""

    code = "generation_failed"


class Refused(UserFacingError):
    """This server's rules refuse the request (a channel where images are off, a blocked word)."""

    code = "server_rules"


class NotAllowed(UserFacingError):
    """The user may not do this (press someone else's Cancel, delete another member's image)."""

    code = "not_allowed"
