"""Runs an ONNX model N times with ONNX Runtime, for counting under qemu-aarch64.

    python3.11 -B -s ort_aarch64_run.py MODEL SHAPE DTYPE SEED N     # SHAPE like 1x3x224x224

Run by the emulated aarch64 Python of scripts/setup_ort_aarch64.sh, so it imports only the
standard library, numpy and onnxruntime, never edge_mnv1. One intra-op and one inter-op
thread: the counting plugin's counter is one per process and not atomic across threads, and a
count is the whole work of an inference anyway. Start-up, session creation and the input are
the same for every N (N is the last argument, one digit, so argv's length is too), so
count(N=2) - count(N=1) is one inference. Prints the output's sum for a person running it.
"""

import sys

import numpy as np
import onnxruntime as ort


def main(argv):
    if len(argv) != 5:
        sys.exit("usage: ort_aarch64_run.py MODEL SHAPE DTYPE SEED N")
    model, shape, dtype, seed, n = argv
    shape = tuple(int(d) for d in shape.split("x"))
    rng = np.random.default_rng(int(seed))
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(int(n)):
        y = sess.run(None, feed)[0]
    print(f"output {tuple(y.shape)} sum {float(np.sum(y, dtype=np.float64)):.6e}")


if __name__ == "__main__":
    main(sys.argv[1:])
