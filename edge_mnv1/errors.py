"""The three ways a command fails, each with its exit code (see DESIGN.md)."""


class EdgeError(Exception):
    """Base class: the message says what went wrong and what to do about it."""

    exit_code = 1


class UsageError(EdgeError):
    """Bad usage or bad input (a file, a flag, a shape): exit code 2."""

    exit_code = 2


class CheckFailed(EdgeError):
    """A check ran and failed (parity below threshold, budget exceeded): exit code 1."""

    exit_code = 1


class DeviceError(EdgeError):
    """The device or the link to it failed (refused, dropped, crashed): exit code 1."""

    exit_code = 1
