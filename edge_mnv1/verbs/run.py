"""edge-mnv1 run ARTIFACT --device URL --input X.npy -o Y.npy"""

from pathlib import Path

import numpy as np

from edge_mnv1.errors import UsageError

HELP = "run one input (a .npy file) through the model on a device and save the output"


def add_arguments(p):
    p.add_argument("artifact", metavar="ARTIFACT_DIR")
    p.add_argument("--device", "-d", default="local", help="device URL (default: local)")
    p.add_argument("--input", "-i", required=True, metavar="X.npy")
    p.add_argument("-o", "--output", required=True, metavar="Y.npy")


def load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError) as e:  # EOFError: an empty file
        raise UsageError(f"{path}: not a .npy array ({type(e).__name__}: {e}); save it with "
                         "numpy.save") from None


def run(args) -> dict:
    from edge_mnv1.artifact.artifact import Artifact
    from edge_mnv1.device.connect import open_device

    x = load_npy(args.input)
    with open_device(args.device, Artifact.load(args.artifact)) as dev:
        y = dev.client.infer(x)
    np.save(args.output, y)
    top1 = int(np.argmax(y.reshape(-1)))
    return {"output": str(Path(args.output)), "shape": list(y.shape), "dtype": str(y.dtype),
            "top1": top1, "device": args.device,
            "text": f"{args.output}: {list(y.shape)} {y.dtype}, top-1 class {top1}"}
