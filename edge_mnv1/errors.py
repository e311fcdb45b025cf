"""The ways a command fails, each with its exit code (README: "Exit codes").

0 success; 1 a check or a device failed; 2 bad usage or bad input; 3 this machine lacks a tool
or a build failed (the environment, not the input: install the tool or read the build log)."""


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


class ToolError(EdgeError):
    """A tool this machine needs is missing or failed (a compiler, CMake, QEMU, ONNX Runtime
    timing the reference): exit code 3."""

    exit_code = 3
