"""Real data sets and the shared preprocessing."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edge_mnv1.model import data
from edge_mnv1.model.data import Preprocessing, load_dataset, preprocess
from edge_mnv1.errors import UsageError
from edge_mnv1.model.network import ModelConfig


def test_digits_split_is_fixed_and_real():
    d = data.digits(32)
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    assert xtr.shape == (1347, 3, 32, 32) and xte.shape == (450, 3, 32, 32)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    totals = np.bincount(np.concatenate([ytr, yte]))
    assert totals.sum() == 1797 and np.all(np.abs(np.bincount(yte) - totals / 4) <= 1)
    assert xtr.min() == -1.0 and xtr.max() == 1.0  # 0..16 ink -> [0, 1] -> [-1, 1]
    assert np.array_equal(xtr[:, 0], xtr[:, 2])  # gray replicated
    again = data.digits(32)
    assert np.array_equal(again["test"][0], xte) and np.array_equal(again["test"][1], yte)
    other = data.digits(32, seed=1)
    assert not np.array_equal(other["test"][1], yte)


def test_load_dataset_digits_limits():
    c = ModelConfig(0.25, 48)
    x, y, names = load_dataset("digits:5", c)
    assert x.shape == (5, 3, 48, 48) and len(y) == 5 and names[0] == "digits/test/0"
    x2, y2, _ = load_dataset("digits", c, limit=3, split="train")
    assert x2.shape[0] == 3 and np.array_equal(y2, data.digits(48)["train"][1][:3])
    assert load_dataset("digits", c, split="all", limit=1797)[0].shape[0] == 1797


def test_preprocessing_round_trip_and_defaults():
    pp = Preprocessing.imagenet(224)
    assert (pp.resize, pp.crop, pp.mean) == (256, 224, (0.485, 0.456, 0.406))
    assert Preprocessing.from_json(pp.to_json()) == pp
    assert Preprocessing.from_dict(Preprocessing.digits(64).to_dict()).mean == (0.5,) * 3
    with pytest.raises(UsageError, match="need resize >= crop"):
        Preprocessing(resize=100, crop=224)
    with pytest.raises(UsageError, match="not an edge_mnv1 preprocessing"):
        Preprocessing.from_dict({"size": 3})


def test_preprocess_resizes_crops_and_normalises():
    pp = Preprocessing(resize=8, crop=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    img = np.zeros((16, 32, 3), np.uint8)  # resized to 8x16, center 4x4 is cols 6..9
    img[:, 12:20] = 255  # a bright vertical band exactly under the center crop
    out = preprocess(img, pp)
    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 1:3], np.array([2.0, 1.0, 0.5])[:, None, None]
                               * np.ones((3, 4, 2)), atol=1e-6)
    gray = preprocess(np.full((10, 10), 0.5, np.float32), pp)  # float input taken as 0..1
    np.testing.assert_allclose(gray, 0.0, atol=1e-6)


def test_photos_ship_offline():
    x, names = data.photos(40)
    assert x.shape == (16, 3, 40, 40) and len(names) == 16
    assert {"astronaut", "chelsea", "coffee", "rocket", "camera", "china"} <= set(names)
    # distinct real images, not constant arrays
    assert min(float(x[i].std()) for i in range(len(x))) > 0.05
    assert len({x[i].tobytes() for i in range(len(x))}) == 16


def _write(path, value, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_image_folder_labels_and_split(tmp_path):
    for cls, v in (("cat", 10), ("dog", 200)):
        for i in range(5):
            _write(tmp_path / cls / f"{i}.png", v)
    (tmp_path / "cat" / "notes.txt").write_text("not an image, ignored")
    d = data.image_folder(tmp_path, 32)
    assert d["class_names"] == ["cat", "dog"] and d["classes"] == 2
    assert d["y"].tolist() == [0] * 5 + [1] * 5 and d["names"][5] == "dog/0.png"
    assert d["x"].shape == (10, 3, 32, 32)
    c = ModelConfig(0.25, 32)
    x, y, names = load_dataset(str(tmp_path), c, split="test")
    assert names == ["cat/4.png", "dog/4.png"] and y.tolist() == [0, 1]
    assert len(load_dataset(str(tmp_path), c, split="train")[0]) == 8
    assert data.num_classes(str(tmp_path)) == 2


def test_flat_folder_is_unlabeled(tmp_path):
    _write(tmp_path / "a.jpg", 50)
    _write(tmp_path / "b.png", 60)
    x, y, names = load_dataset(str(tmp_path), ModelConfig(0.25, 32))
    assert y is None and names == ["a.jpg", "b.png"]


def test_folder_errors_name_the_culprit(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty: no images"):
        data.image_folder(tmp_path / "empty", 32)
    _write(tmp_path / "set" / "a" / "0.png", 1)
    (tmp_path / "set" / "b").mkdir()
    with pytest.raises(UsageError, match=r"set/b: no images"):
        data.image_folder(tmp_path / "set", 32)
    _write(tmp_path / "bad" / "a" / "0.png", 1)
    (tmp_path / "bad" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UsageError, match=r"bad/a/1.png: cannot read this image"):
        data.image_folder(tmp_path / "bad", 32)


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(UsageError, match="'mnist'.*digits, digits:N, photos, a directory"):
        load_dataset("mnist", ModelConfig(0.25, 32))
    with pytest.raises(UsageError, match="digits:N must be a positive integer"):
        load_dataset("digits:x", ModelConfig(0.25, 32))
    with pytest.raises(UsageError, match="crops 64x64 but the model takes 32x32"):
        load_dataset("digits", ModelConfig(0.25, 32), Preprocessing.digits(64))


def test_data_module_does_not_import_torch():
    code = "import sys, edge_mnv1.model.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
