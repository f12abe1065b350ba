"""One error type for every user-facing problem: it carries the message and the CLI exit code."""


class SdkdError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""

    exit_code = 2
