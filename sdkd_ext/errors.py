"""One error type for every user-facing problem: it carries the message and the CLI exit code."""

from __future__ import annotations

from pathlib import Path


class SdkdError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""

    exit_code = 2


class OutputExists(SdkdError):
    """An output is already there and overwriting was not asked for; carries the path, so each front end can
    word the fix in its own terms (the message is the CLI's)."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"{path} already exists; choose another --out or pass --overwrite")
