"""User-facing errors.

Every problem a user can cause (bad input, unknown name, locked stream, invalid store)
is raised as an :class:`AvxError` subclass whose message is one line naming the file or
thing and the problem. The CLI prints exactly that line and exits non-zero; anything
else that escapes is a bug in avx and keeps its traceback.
"""

from __future__ import annotations


class AvxError(Exception):
    """Base class for errors that are the user's to fix; the message is one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class UnknownNameError(AvxError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} '{name}'; valid: {', '.join(valid) or '(none)'}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class StoreError(AvxError):
    """The store is missing, invalid, or does not match what the command needs."""


class StoreLockedError(AvxError):
    """Another process is writing the same stream."""


class MediaError(AvxError):
    """A media file is missing, corrupt, silent, too short, or has no usable face.

    Raised per sample during extraction; the runner records it as that sample's failure
    (status ``failed`` + reason) instead of stopping the run.
    """
