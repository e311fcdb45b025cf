"""Real data sets and the one preprocessing function every stage uses (numpy + PIL, no torch).

- digits: sklearn's 1,797 real 8x8 handwritten digits (ships with scikit-learn).
- photos: real photographs that ship inside scikit-image and scikit-learn (no download).
- DIR: an ImageNet-style folder, one subfolder per class (or loose images, unlabeled).

`Preprocessing` holds the parameters of `preprocess`; it is stored in the checkpoint and in
the ONNX metadata so that training, export checks, parity and the device all see the same
numbers for the same image.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from edge_mnv1.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm"}
DATASETS = ("digits", "digits:N", "photos", "a directory of images")
DIGITS_TEST_FRACTION = 0.25  # 1,347 train / 450 test

# skimage.data images that are real photographs and ship inside the wheel; others
# (eagle, lily, kidney, skin, ...) need pooch, i.e. a download.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon",
                  "clock", "hubble_deep_field", "immunohistochemistry", "grass", "brick",
                  "gravel")
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize`, center-crop `crop` x `crop`, then
    (x - mean) / std per channel, on RGB values in [0, 1]; output CHW float32."""

    resize: int
    crop: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.crop < 1 or self.resize < self.crop:
            raise UsageError(f"preprocessing {self.to_dict()}: need resize >= crop >= 1")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UsageError(f"preprocessing {self.to_dict()}: need 3 means and 3 positive stds")
        if self.interpolation not in _RESAMPLE:
            raise UsageError(f"preprocessing interpolation {self.interpolation!r}: use one of "
                             f"{sorted(_RESAMPLE)}")

    @classmethod
    def imagenet(cls, resolution: int) -> "Preprocessing":
        """Folders and photos: the usual 256 -> 224 ratio (resize to resolution / 0.875)."""
        return cls(resize=int(round(resolution / 0.875)), crop=resolution)

    @classmethod
    def digits(cls, resolution: int) -> "Preprocessing":
        """Digits are already centred squares: upscale to the resolution, no crop, and
        map [0, 1] to [-1, 1] (the Inception scaling of the paper's TF models)."""
        return cls(resize=resolution, crop=resolution, mean=(0.5,) * 3, std=(0.5,) * 3)

    def to_dict(self) -> dict:
        return dict(resize=self.resize, crop=self.crop, mean=list(self.mean),
                    std=list(self.std), interpolation=self.interpolation)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise UsageError(f"preprocessing {d!r} is not an edge_mnv1 preprocessing ({e})") \
                from None

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise UsageError(f"preprocessing is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise UsageError(f"preprocessing {d!r} must be a JSON object")
        return cls.from_dict(d)


def preprocess(image: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """One image, HxW (gray) or HxWxC, uint8 0..255 or float 0..1 -> CHW float32."""
    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[:, :, :3]  # drop alpha
    h, w = img.shape[:2]
    scale = pp.resize / min(h, w)
    nh, nw = max(pp.crop, round(h * scale)), max(pp.crop, round(w * scale))
    # PIL's 32-bit float mode keeps full precision; resampling is per channel.
    resample = _RESAMPLE[pp.interpolation]
    resized = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c]))
                                   .resize((nw, nh), resample)) for c in range(3)])
    top, left = (nh - pp.crop) // 2, (nw - pp.crop) // 2
    out = resized[:, top:top + pp.crop, left:left + pp.crop]
    mean = np.asarray(pp.mean, np.float32)[:, None, None]
    std = np.asarray(pp.std, np.float32)[:, None, None]
    return ((out - mean) / std).astype(np.float32)


def preprocess_batch(images, pp: Preprocessing) -> np.ndarray:
    """A list of images -> NCHW float32."""
    return np.stack([preprocess(im, pp) for im in images]).astype(np.float32)


def digits_raw(seed: int = 0) -> dict:
    """Seeded stratified split of the raw 8x8 digits in [0, 1]: {split: (images, labels)}."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = d.images.astype(np.float32) / 16.0  # 0..16 ink levels -> 0..1
    y = d.target.astype(np.int64)
    itr, ite, ytr, yte = train_test_split(images, y, test_size=DIGITS_TEST_FRACTION,
                                          random_state=seed, stratify=y)
    return {"train": (itr, ytr), "test": (ite, yte), "all": (images, y)}


def digits(resolution: int, seed: int = 0, preprocessing: Preprocessing | None = None) -> dict:
    """The seeded digits split at `resolution`: {"train": (x, y), "test": (x, y)}, x float32
    NCHW (gray replicated to 3 channels), y int64."""
    pp = preprocessing or Preprocessing.digits(resolution)
    raw = digits_raw(seed)
    return {k: (preprocess_batch(raw[k][0], pp), raw[k][1]) for k in ("train", "test")}


def _load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UsageError(f"{path}: cannot read this image ({e}); remove or replace the file") \
            from None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def image_folder(directory, resolution: int, preprocessing: Preprocessing | None = None) -> dict:
    """An ImageNet-style folder: one subfolder per class (sorted names are the classes), or
    loose images (unlabeled). Returns {"x", "y" (or None), "names", "classes", "class_names"}."""
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory; give digits, photos or a folder of images")
    pp = preprocessing or Preprocessing.imagenet(resolution)
    try:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        groups = [(d.name, _images_in(d)) for d in subdirs] if subdirs else \
            [(None, _images_in(root))]
    except OSError as e:
        raise UsageError(f"{root}: cannot list the folder ({e})") from None
    for name, files in groups:
        if not files:
            where = root / name if name else root
            raise UsageError(f"{where}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this "
                             "folder; add images or remove the folder")
    xs, ys, names = [], [], []
    for label, (name, files) in enumerate(groups):
        for f in files:
            xs.append(preprocess(_load_image(f), pp))
            ys.append(label)
            names.append(str(f.relative_to(root)))
    labeled = subdirs != []
    return {"x": np.stack(xs).astype(np.float32),
            "y": np.asarray(ys, np.int64) if labeled else None,
            "names": names, "classes": len(groups) if labeled else None,
            "class_names": [g[0] for g in groups] if labeled else None}


def photo_images() -> list[tuple[str, np.ndarray]]:
    """The raw photos (name, HxWx3 uint8), in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = [(n, getattr(skimage.data, n)()) for n in SKIMAGE_PHOTOS]
    left, _, _ = skimage.data.stereo_motorcycle()
    out.append(("motorcycle_left", left))
    sk = load_sample_images()
    out += [(Path(f).stem, im) for f, im in zip(sk.filenames, sk.images)]
    return out


def photos(resolution: int, preprocessing: Preprocessing | None = None):
    """Real photos as unlabeled inputs: (x NCHW float32, names)."""
    pp = preprocessing or Preprocessing.imagenet(resolution)
    raw = photo_images()
    return preprocess_batch([im for _, im in raw], pp), [n for n, _ in raw]


def default_preprocessing(spec: str, resolution: int) -> Preprocessing:
    """The preprocessing a model trained on `spec` should use."""
    return Preprocessing.digits(resolution) if str(spec).split(":")[0] == "digits" \
        else Preprocessing.imagenet(resolution)


def _parse_digits(spec: str) -> int | None:
    _, _, n = spec.partition(":")
    if not n:
        return None
    if not n.isdigit() or int(n) < 1:
        raise UsageError(f"data set {spec!r}: N in digits:N must be a positive integer")
    return int(n)


def load_dataset(spec: str, config, preprocessing: Preprocessing | None = None,
                 split: str = "test", limit: int | None = None, seed: int = 0):
    """Inputs for `spec` at `config.resolution`: (x float32 NCHW, y int64 or None, names).

    spec: "digits" / "digits:N" (the first N of the split), "photos", or a directory.
    split: "train", "test" or "all" (digits and labeled folders; photos are always all).
    A labeled folder's test split is every 5th image of each class (sorted by file name).
    """
    if split not in ("train", "test", "all"):
        raise UsageError(f"split {split!r}: use train, test or all")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: must be a positive number of inputs")
    spec = str(spec)
    res = config.resolution
    pp = preprocessing or default_preprocessing(spec, res)
    if pp.crop != res:
        raise UsageError(f"preprocessing crops {pp.crop}x{pp.crop} but the model takes "
                         f"{res}x{res}; use the preprocessing recorded with the model")
    if spec == "digits" or spec.startswith("digits:"):
        n = _parse_digits(spec)
        images, y = digits_raw(seed)[split]
        n = min(v for v in (n, limit, len(y)) if v is not None)
        x, y = preprocess_batch(images[:n], pp), y[:n]  # only what is asked for: 224 is big
        names = [f"digits/{split}/{i}" for i in range(len(y))]
    elif spec == "photos":
        x, names = photos(res, pp)
        y = None
    elif os.path.isdir(spec):
        d = image_folder(spec, res, pp)
        x, y, names = d["x"], d["y"], d["names"]
        if y is not None and split != "all":
            idx = _folder_split(y, split)
            x, y, names = x[idx], y[idx], [names[i] for i in idx]
    else:
        raise UsageError(f"data set {spec!r}: not a known data set and not a directory; "
                         f"use one of: {', '.join(DATASETS)}")
    if limit is not None:
        x, names = x[:limit], names[:limit]
        y = None if y is None else y[:limit]
    if len(x) == 0:
        raise UsageError(f"data set {spec!r} ({split}) has no inputs; use more images")
    return x, y, names


def num_classes(spec: str) -> int | None:
    """Classes a labeled data set has (None for unlabeled inputs such as photos)."""
    spec = str(spec)
    if spec == "digits" or spec.startswith("digits:"):
        return 10
    if spec != "photos" and os.path.isdir(spec):
        subdirs = [p for p in Path(spec).iterdir() if p.is_dir() and not p.name.startswith(".")]
        return len(subdirs) or None
    return None


def _folder_split(y: np.ndarray, split: str) -> np.ndarray:
    idx = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        pick = (np.arange(len(members)) % 5 == 4)
        idx.extend(members[pick if split == "test" else ~pick])
    return np.asarray(sorted(idx), dtype=np.int64)
