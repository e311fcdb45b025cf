"""Training, calibrated untrained models, and checkpoints."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from edge_mnv1.model import checkpoint, data
from edge_mnv1.errors import UsageError
from edge_mnv1.model.network import ModelConfig, MobileNetV1
from edge_mnv1.model.train import predict, train


@pytest.mark.slow
def test_digits_model_reaches_96_percent(digits_ckpt):
    model, config, pp, meta = checkpoint.load_model(digits_ckpt)
    assert config == ModelConfig(0.25, 64, classes=10)
    assert pp == data.Preprocessing.digits(64)
    x, y, _ = data.load_dataset("digits", config, pp, split="test")
    acc = float((predict(model, x).argmax(1) == y).mean())
    assert acc == meta["test_accuracy"] >= 0.96
    assert meta["test_inputs"] == 450 and meta["train_inputs"] == 1347


def test_training_is_reproducible(tmp_path):
    config = ModelConfig(0.25, 32, classes=10)
    runs = [train(config, "digits:160", tmp_path / f"{i}.safetensors", epochs=1, seed=seed,
                  batch_size=32, progress=False) for i, seed in enumerate((3, 3, 4))]
    a, b, c = (checkpoint.load(tmp_path / f"{i}.safetensors")[0] for i in range(3))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["fc.weight"], c["fc.weight"])
    assert runs[0]["final_loss"] == runs[1]["final_loss"]
    assert runs[0]["train_inputs"] == 160


def _activations(model, x):
    """Root mean square of every conv block's output and of the logits."""
    rms = []
    hooks = [m.register_forward_hook(lambda m, i, o: rms.append(float(o.pow(2).mean().sqrt())))
             for m in model.modules() if type(m).__name__ == "ConvBNReLU"]
    logits = predict(model, x)
    for h in hooks:
        h.remove()
    return rms, logits


def test_untrained_model_keeps_activation_scale(untrained_ckpt_factory):
    path = untrained_ckpt_factory(1.0, 224)
    model, config, pp, meta = checkpoint.load_model(path)
    assert meta["epochs"] == 0 and meta["calibration_inputs"] == 16 and config.classes == 1000
    x, _, _ = data.load_dataset("photos", config, pp)
    rms, logits = _activations(model, x)
    assert len(rms) == 27 and all(0.1 < r < 10 for r in rms), rms
    spread = logits.std(axis=0)  # per class, across the 16 photos
    assert 0.1 < float(spread.mean()) < 10
    assert len(set(logits.argmax(1))) > 1  # different photos, different answers
    # Without calibration the same weights collapse: the test above can tell.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    rms0, logits0 = _activations(model, x)
    assert rms0[-1] < 1e-3 and float(logits0.std(axis=0).mean()) < 1e-3


def test_untrained_digits_checkpoint_is_seeded(tmp_path):
    config = ModelConfig(0.5, 33, classes=10)
    r = train(config, "digits", tmp_path / "u.safetensors", epochs=0, seed=1, progress=False)
    assert r["calibration_inputs"] == 64 and r["test_accuracy"] is None
    again = train(config, "digits", tmp_path / "v.safetensors", epochs=0, seed=1,
                  progress=False)
    a, b = checkpoint.load(r["checkpoint"])[0], checkpoint.load(again["checkpoint"])[0]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    _, logits = _activations(checkpoint.load_model(r["checkpoint"])[0],
                             data.load_dataset("digits", config, limit=32)[0])
    assert 0.1 < float(logits.std(axis=0).mean()) < 10


def test_checkpoint_round_trip(tmp_path):
    config = ModelConfig(0.25, 40, classes=3, dropout=0.1)
    model = MobileNetV1(config)
    pp = data.Preprocessing.imagenet(40)
    path = checkpoint.save(tmp_path / "sub" / "m.safetensors", checkpoint.state_arrays(model),
                           config, pp, info={"note": "x"})
    loaded, c2, pp2, info = checkpoint.load_model(path)
    assert (c2, pp2, info) == (config, pp, {"note": "x"})
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert not (tmp_path / "sub" / "m.safetensors.tmp").exists()


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match="nope.safetensors: no such file.*edge-mnv1 train"):
        checkpoint.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(UsageError, match="corrupt.safetensors: not a readable safetensors"):
        checkpoint.load(bad)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(plain))
    with pytest.raises(UsageError, match="plain.safetensors: no edge_mnv1 model config"):
        checkpoint.load(plain)
    old = tmp_path / "old.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(old), metadata={
        "format": checkpoint.FORMAT, "format_version": "0", "config": "{}",
        "preprocessing": "{}"})
    with pytest.raises(UsageError, match="format version '0'"):
        checkpoint.load(old)
    wrong = tmp_path / "wrong.safetensors"
    checkpoint.save(wrong, {"w": np.zeros(3, np.float32)}, ModelConfig(0.25, 32),
                    data.Preprocessing.imagenet(32))
    with pytest.raises(UsageError, match="tensors do not match its config"):
        checkpoint.load_model(wrong)


def test_train_refuses_bad_requests(tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(UsageError, match="--epochs -1"):
        train(ModelConfig(0.25, 32, classes=10), "digits", out, epochs=-1)
    with pytest.raises(UsageError, match="unlabeled inputs cannot train"):
        train(ModelConfig(0.25, 32, classes=10), "photos", out, epochs=1)
    with pytest.raises(UsageError, match="--classes 5: the data has labels up to 9"):
        train(ModelConfig(0.25, 32, classes=5), "digits:64", out, epochs=1)
    assert not out.exists()
    assert json.loads(json.dumps(ModelConfig(0.25, 32).to_dict()))["alpha"] == 0.25
