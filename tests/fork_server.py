"""Runs `edge-mnv1` commands in forked children of a process that has paid TVM's slow imports
once (`tvm.s_tir.tensor_intrin` parses ~500 TVMScript functions: 20 s to minutes). Each child
is the real command (edge_mnv1.cli.main) from its first line of work on, so a test that kills
it at a random moment hits the command's work, not interpreter start-up.

Protocol on stdin/stdout, one JSON object a line:
  -> {"argv": [...], "log": PATH, "env": {...}}   <- {"pid": N}   then   <- {"exit": CODE}
"""

import json
import os
import sys

import tvm  # noqa: F401
import tvm.s_tir.meta_schedule  # noqa: F401
import tvm.s_tir.tensor_intrin  # noqa: F401

from edge_mnv1 import cli

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(req.get("env") or {})
            code = cli.main(req["argv"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 0)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
