"""The reference model against the paper: structure, MACs and parameters."""

import pytest
import torch

from edge_mnv1.errors import UsageError
from edge_mnv1.model.network import ModelConfig, MobileNetV1, channels, cost_summary, layer_costs, param_count

# Exact integers of the cost model (conv + FC MACs; trainable params incl. BN gamma/beta),
# and the paper's printed figures (Tables 4, 6, 7).
TABLE = [  # alpha, resolution, standard_conv, macs, params, paper MACs (M), paper params (M)
    (1.0, 224, False, 568_740_352, 4_231_976, 569, 4.2),
    (0.75, 224, False, 325_400_448, 2_585_560, 325, 2.6),
    (0.5, 224, False, 149_497_088, 1_331_592, 149, 1.3),
    (0.25, 224, False, 41_030_272, 470_072, 41, 0.47),
    (1.0, 192, False, 418_121_728, 4_231_976, 418, 4.2),
    (1.0, 160, False, 290_675_200, 4_231_976, 290, 4.2),
    (1.0, 128, False, 186_400_768, 4_231_976, 186, 4.2),
    (1.0, 224, True, 4_867_293_184, 29_294_088, 4866, 29.3),
]


def _decimals(figure: float) -> int:
    return len(repr(figure).split(".")[1]) if "." in repr(figure) else 0


@pytest.mark.parametrize("alpha,res,std,macs,params,paper_macs,paper_params", TABLE)
def test_cost_model_reproduces_the_paper(alpha, res, std, macs, params, paper_macs,
                                         paper_params):
    s = cost_summary(ModelConfig(alpha, res, standard_conv=std))
    assert (s["macs"], s["params"]) == (macs, params)
    assert abs(s["macs"] / (paper_macs * 1e6) - 1) < 0.005
    # The paper prints params to 2-3 significant digits ("1.3M" for 1,331,592): the count
    # must round to the printed figure. 0.5% of "1.3M" is impossible for any convention
    # (conv + FC weights alone are already 1.3196M).
    assert round(s["params"] / 1e6, _decimals(paper_params)) == paper_params


def test_bn_convention_is_the_one_that_rounds_to_table_6():
    s = cost_summary(ModelConfig(0.25, 224))
    assert s["params_without_bn"] == 464_600  # would print as 0.46M, not the paper's 0.47M
    assert s["params"] - s["params_without_bn"] == 5_472  # BN gamma and beta
    assert s["params_folded"] == 467_336  # weights + one bias per conv channel (ONNX)


@pytest.mark.parametrize("alpha,res,std", [(1.0, 224, False), (0.25, 64, False),
                                           (0.5, 97, False), (0.75, 131, True)])
def test_torch_parameters_equal_cost_model(alpha, res, std):
    config = ModelConfig(alpha, res, classes=10, standard_conv=std)
    model = MobileNetV1(config)
    assert param_count(model) == cost_summary(config)["params"]
    # BN running mean and var are buffers, as many as BN's gamma and beta: not params.
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("mean", "var")))
    assert stats == cost_summary(config)["params"] - cost_summary(config)["params_without_bn"]


def test_layer_structure_at_224():
    rows = layer_costs(ModelConfig(1.0, 224))
    convs = [r for r in rows if r["type"] in ("conv", "dw", "pw")]
    assert len(convs) == 27 and len(rows) == 29  # 28 layers of the paper + the pool
    assert [r["stride"] for r in convs if r["type"] == "dw"] == \
        [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    # Table 1's last "Conv dw / s2" is a misprint: 7x7 stays 7x7 into the 7x7 average pool.
    assert rows[-4]["name"] == "block13.dw" and rows[-4]["out_shape"] == [1024, 7, 7]
    assert rows[-2] == dict(name="pool", type="avgpool", stride=1, in_shape=[1024, 7, 7],
                            out_shape=[1024, 1, 1], macs=0, params=0, params_folded=0)
    assert rows[-1]["macs"] == 1024 * 1000 and rows[-1]["params"] == 1024 * 1000 + 1000
    assert [r["out_shape"][0] for r in convs if r["type"] != "dw"] == \
        [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


def test_standard_conv_replaces_each_pair():
    rows = layer_costs(ModelConfig(1.0, 224, standard_conv=True))
    assert [r["type"] for r in rows] == ["conv"] * 14 + ["avgpool", "fc"]
    assert rows[1]["macs"] == 112 * 112 * 64 * 32 * 9


def test_channel_rule():
    assert [channels(c, 0.75) for c in (32, 64, 1024)] == [24, 48, 768]
    assert channels(32, 0.3) == 9  # floor, like Keras' int(filters * alpha)
    assert channels(100, 0.29) == 29  # not 28: float error is absorbed
    assert channels(32, 0.001) == 1


@pytest.mark.parametrize("res", [32, 33, 97, 131])
def test_forward_any_resolution(res):
    config = ModelConfig(0.25, res, classes=7)
    model = MobileNetV1(config).eval()
    with torch.no_grad():
        feats = model.features(torch.zeros(2, 3, res, res))
        out = model(torch.zeros(2, 3, res, res))
    assert out.shape == (2, 7)
    assert list(feats.shape[1:]) == layer_costs(config)[-3]["out_shape"]


def test_convs_have_no_bias():
    model = MobileNetV1(ModelConfig(0.5, 64))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 27 and all(c.bias is None for c in convs)
    assert sum(c.groups > 1 for c in convs) == 13


@pytest.mark.parametrize("kwargs,flag", [
    (dict(alpha=0, resolution=224), "--alpha 0"),
    (dict(alpha=1.5, resolution=224), "--alpha 1.5"),
    (dict(alpha=-0.25, resolution=224), "--alpha -0.25"),
    (dict(alpha=1.0, resolution=31), "--resolution 31"),
    (dict(alpha=1.0, resolution=224, classes=0), "--classes 0"),
    (dict(alpha=1.0, resolution=224, dropout=1.0), "--dropout 1.0"),
])
def test_config_validation_names_the_flag(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        ModelConfig(**kwargs)


def test_config_round_trip():
    c = ModelConfig(0.5, 97, classes=3, dropout=0.2, standard_conv=True)
    assert ModelConfig.from_dict(c.to_dict()) == c
    assert ModelConfig.from_json(c.to_json()) == c
    with pytest.raises(UsageError, match="unknown keys: \\['beta'\\]"):
        ModelConfig.from_dict(dict(c.to_dict(), beta=1))
    with pytest.raises(UsageError, match="not valid JSON"):
        ModelConfig.from_json("{alpha")
