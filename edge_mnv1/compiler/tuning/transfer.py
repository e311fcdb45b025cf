"""Records from another CPU of the same ISA class: kept per kernel only where they win here.

A record measured on a Zen 4 is a correct schedule on any AVX-512 CPU, but its tile sizes were
chosen for the Zen 4's caches. Before such records are used on this CPU, each kernel is built
twice, with the record's schedule and with the default schedule, and both are timed here as the
tuner times candidates (weights and output flushed from the caches before each run, input
kept); a kernel whose record is slower than its default falls back to the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx

from edge_mnv1 import log

# A record must be this much slower than the default before it is dropped: kernel timings
# on a shared machine wobble by a few percent from run to run.
_MARGIN = 1.03
_REPEAT = 7


@dataclass(frozen=True)
class Verdict:
    kernel: str
    record_ms: float
    default_ms: float

    @property
    def keep_record(self) -> bool:
        return self.record_ms <= self.default_ms * _MARGIN


def time_kernel(func: tirx.PrimFunc, target: tvm.target.Target) -> float:
    """Median milliseconds of one call of `func` built alone for this machine."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    # Weights arrive prepacked in the program; time the kernel without the rewrite, as tune does.
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    rt = tvm_build(mod, target=target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = []
    for buf in mod["main"].params:  # TVM 0.27: a PrimFunc's parameters are its buffers
        shape = [int(d) for d in buf.shape]
        data = rng.uniform(-1, 1, shape).astype(buf.dtype) if "float" in buf.dtype \
            else np.zeros(shape, buf.dtype)
        args.append(tvm.runtime.tensor(data, dev))
    evaluator = rt.time_evaluator("main", dev, number=1, repeat=_REPEAT, min_repeat_ms=0,
                                  f_preproc="cache_flush_cpu_non_first_arg")
    return float(np.median(evaluator(*args).results)) * 1e3


def compare(tuned: tvm.IRModule, defaults: tvm.IRModule, kernels: list[str],
            target: tvm.target.Target) -> list[Verdict]:
    """Times each kernel of `kernels` as `tuned` schedules it and as `defaults` does."""
    # TVM's runtime would run one worker thread on these VMs; the program uses every core.
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    verdicts = []
    for name in kernels:
        v = Verdict(name, time_kernel(tuned[name], target), time_kernel(defaults[name], target))
        verdicts.append(v)
        log.info(f"compile: {name}: transferred record {v.record_ms:.4f} ms, default "
                 f"{v.default_ms:.4f} ms -> {'record' if v.keep_record else 'default'}")
    return verdicts


def fall_back(tuned: tvm.IRModule, untuned: tvm.IRModule, verdicts: list[Verdict]) -> tvm.IRModule:
    """`tuned` with every kernel whose record lost put back unscheduled (the default schedule
    is applied to it afterwards, like any kernel no record covers)."""
    out = tvm.IRModule(dict(tuned.functions), attrs=tuned.attrs)
    for v in verdicts:
        if not v.keep_record:
            gv = out.get_global_var(v.kernel)
            out.update_func(gv, untuned[v.kernel])
    return out
