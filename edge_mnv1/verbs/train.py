"""`edge-mnv1 train`: train the reference model (or, with --epochs 0, write a seeded untrained
one whose batch norms are calibrated on real images) into a checkpoint."""

from edge_mnv1.model import data
from edge_mnv1.model.network import ModelConfig
from edge_mnv1.model.train import DEFAULT_EPOCHS, train

HELP = "train MobileNetV1 on digits or an image folder into a safetensors checkpoint"


def add_arguments(p):
    p.add_argument("--data", required=True, metavar="digits|DIR",
                   help="digits, digits:N (first N training digits), a folder with one "
                        "subfolder per class, or (with --epochs 0) photos")
    p.add_argument("--alpha", type=float, default=0.25, help="width multiplier (default 0.25)")
    p.add_argument("--resolution", type=int, default=64, help="input side (default 64)")
    p.add_argument("--classes", type=int, help="output classes (default: the data's; "
                                               "1000 for unlabeled photos)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the classifier")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help=f"passes over the data (default {DEFAULT_EPOCHS}); 0 writes an "
                        "untrained model with batch norm calibrated on --data")
    p.add_argument("--seed", type=int, default=0, help="seed for init and data order")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2, help="one-cycle max learning rate")
    p.add_argument("-o", "--output", required=True, metavar="CKPT",
                   help="checkpoint to write (.safetensors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> dict:
    classes = args.classes if args.classes is not None else (data.num_classes(args.data) or 1000)
    config = ModelConfig(alpha=args.alpha, resolution=args.resolution, classes=classes,
                         dropout=args.dropout)
    r = train(config, args.data, args.output, epochs=args.epochs, seed=args.seed,
              batch_size=args.batch_size, lr=args.lr, progress=not args.no_progress)
    what = (f"test accuracy {r['test_accuracy']:.2%} on {r['test_inputs']} inputs"
            if r.get("test_accuracy") is not None else
            f"untrained, batch norm calibrated on {r.get('calibration_inputs')} inputs"
            if args.epochs == 0 else "no labeled test inputs")
    r["text"] = (f"{args.output}: alpha {config.alpha:g}, {config.resolution}x"
                 f"{config.resolution}, {config.classes} classes, {args.epochs} epochs in "
                 f"{r['train_seconds']:.1f} s; {what}")
    return r
