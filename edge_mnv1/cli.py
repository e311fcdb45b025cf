"""The `edge-mnv1` command line: one verb a module under edge_mnv1/verbs/.

Each verb module has `HELP`, `add_arguments(parser)` and `run(args) -> dict`. The dict is the
--json object (printed alone on stdout); without --json its "text" entry (or the dict itself)
is printed for humans. A result with "passed": False exits 1; errors from edge_mnv1.errors
exit with their own code and a message instead of a traceback.
"""

import argparse
import contextlib
import importlib
import json
import os
import sys

from edge_mnv1.errors import EdgeError

VERBS = ["info", "train", "export", "quantize", "tune", "compile", "emulate", "deploy", "run",
         "parity", "bench", "profile", "soak", "fuzz", "demo"]


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The verbs' parsers; only the named verb's when argv starts with one: each verb module
    imports what it needs (torch, TVM), a second or more that another verb need not pay."""
    p = argparse.ArgumentParser(
        prog="edge-mnv1",
        description="MobileNetV1 from PyTorch to edge devices with Apache TVM: train, export, "
                    "tune, compile, deploy (local | ssh | serial), and check parity and speed "
                    "on the device.",
        epilog="Every verb takes --json (one JSON object on stdout). Exit codes: 0 ok, "
               "1 a check or a device failed, 2 bad usage or bad input, 3 a tool this machine "
               "needs is missing or failed.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for verb in [v for v in VERBS if argv[:1] == [v]] or VERBS:
        mod = importlib.import_module(f"edge_mnv1.verbs.{verb}")
        sp = sub.add_parser(verb, help=mod.HELP, description=mod.HELP)
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = _parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    try:
        with _stdout_to_stderr():
            result = args._run(args)
    except EdgeError as e:
        print(f"edge-mnv1 {args.verb}: error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(e), "exit_code": e.exit_code}))
        return e.exit_code
    except KeyboardInterrupt:
        print(f"edge-mnv1 {args.verb}: interrupted", file=sys.stderr)
        return 130
    result = result or {}
    # A verb that keeps running after its result (emulate: prints the device URL, then serves
    # until Ctrl-C) returns the rest of its work as result["_after"], run once stdout is out.
    after = result.pop("_after", None)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "text"}, default=_jsonable))
    elif "text" in result:
        print(result["text"])
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    if after is not None:
        sys.stdout.flush()
        try:
            after()
        except EdgeError as e:
            print(f"edge-mnv1 {args.verb}: error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            pass
    return 1 if result.get("passed") is False else 0


@contextlib.contextmanager
def _stdout_to_stderr():
    """While a verb runs, anything written to stdout (TVM's C++ logs, print calls in
    libraries) goes to stderr, so that stdout carries only the result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
