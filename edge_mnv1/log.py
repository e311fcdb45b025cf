"""Progress and logs go to stderr so that stdout carries only the --json object."""

import sys


def info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
