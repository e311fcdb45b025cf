"""Reference MobileNetV1 (Howard et al. 2017, Table 1) and its cost model.

One layer plan (`layer_plan`) drives both the torch module and the cost model, so the
network that is trained, exported and compiled is the one whose MACs and parameters the
cost model reports.

Conventions (chosen because they reproduce the paper's Tables 4, 6 and 7; see
docs/foundation.md for the numbers):
- channels: `max(1, floor(c * alpha))`, like Keras' MobileNet `int(filters * alpha)`. For
  the paper's alphas (1, 0.75, 0.5, 0.25) every width is an exact integer, so any rounding
  rule gives the paper's networks; floor is the one that never widens a layer.
- MACs: one multiply-accumulate per weight use in conv and fully connected layers. BN,
  ReLU, bias additions and the global average pool are not counted (the paper counts
  "Mult-Adds" of conv and FC layers; counting the pool's 50k adds would not change a digit).
- params: trainable parameters = conv weights + BN gamma and beta + FC weight and bias,
  i.e. exactly `sum(p.numel() for p in model.parameters())`; BN running statistics are
  buffers, not parameters. This is the only convention under which every Table 6 figure
  rounds to the printed value (0.25: 470,072 -> "0.47M"; without BN it is 464,600 -> 0.46M).
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict

from torch import nn

from edge_mnv1.errors import UsageError

# Table 1 after the stem: (output channels at alpha 1, depthwise stride) for the 13 blocks.
# The paper prints the last depthwise layer as "Conv dw / s2" on a 7x7 input, a misprint:
# the network its MAC and parameter figures describe keeps 7x7 there (stride 1), and the
# following "Avg Pool 7x7" needs a 7x7 input.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
          (1024, 2), (1024, 1))
STEM_CHANNELS = 32


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    alpha: float
    resolution: int
    classes: int = 1000
    dropout: float = 0.0
    standard_conv: bool = False

    def __post_init__(self):
        if not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise UsageError(f"--alpha {self.alpha}: the width multiplier must be in (0, 1], "
                             "e.g. 1.0, 0.75, 0.5 or 0.25")
        if not isinstance(self.resolution, int) or self.resolution < 32:
            raise UsageError(f"--resolution {self.resolution}: the input must be at least "
                             "32x32 (five stride-2 layers), e.g. 224, 192, 160, 128 or 64")
        if not isinstance(self.classes, int) or self.classes < 1:
            raise UsageError(f"--classes {self.classes}: need at least one class")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout {self.dropout}: must be in [0, 1)")
        object.__setattr__(self, "alpha", float(self.alpha))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise UsageError(f"model config must be a JSON object, got {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown or "alpha" not in d or "resolution" not in d:
            raise UsageError(f"model config {json.dumps(d)} is not an edge_mnv1 config "
                             f"(needs alpha and resolution; unknown keys: {sorted(unknown)})")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise UsageError(f"model config is not valid JSON ({e})") from None
        return cls.from_dict(d)


def channels(c: int, alpha: float) -> int:
    # The epsilon keeps e.g. 100 * 0.29 = 28.999999999999996 from flooring to 28.
    return max(1, int(c * alpha + 1e-9))


def conv_out(size: int, stride: int) -> int:
    """Output side of a 3x3 conv with padding 1 (also right for 1x1 with padding 0)."""
    return (size - 1) // stride + 1


def layer_plan(config: ModelConfig) -> list[dict]:
    """The conv layers in order: name, type (conv|dw|pw), cin, cout, kernel, stride, groups."""
    c = channels(STEM_CHANNELS, config.alpha)
    plan = [dict(name="conv0", type="conv", cin=3, cout=c, kernel=3, stride=2, groups=1)]
    for i, (width, stride) in enumerate(BLOCKS, start=1):
        cout = channels(width, config.alpha)
        if config.standard_conv:  # Table 4 "Conv MobileNet": one full 3x3 conv per block
            plan.append(dict(name=f"block{i}", type="conv", cin=c, cout=cout, kernel=3,
                             stride=stride, groups=1))
        else:
            plan.append(dict(name=f"block{i}.dw", type="dw", cin=c, cout=c, kernel=3,
                             stride=stride, groups=c))
            plan.append(dict(name=f"block{i}.pw", type="pw", cin=c, cout=cout, kernel=1,
                             stride=1, groups=1))
        c = cout
    return plan


def layer_costs(config: ModelConfig) -> list[dict]:
    """Per layer: name, type, stride, in_shape, out_shape (C, H, W), macs, params.

    Conv rows include their BN's gamma and beta in params (see the module docstring);
    `params_folded` is what the layer holds once BN is folded into a conv bias (as in ONNX).
    """
    rows = []
    h = config.resolution
    for layer in layer_plan(config):
        k, s = layer["kernel"], layer["stride"]
        ho = conv_out(h, s)
        weights = layer["cout"] * (layer["cin"] // layer["groups"]) * k * k
        rows.append(dict(name=layer["name"], type=layer["type"], stride=s,
                         in_shape=[layer["cin"], h, h], out_shape=[layer["cout"], ho, ho],
                         macs=weights * ho * ho, params=weights + 2 * layer["cout"],
                         params_folded=weights + layer["cout"]))
        h = ho
    c = rows[-1]["out_shape"][0]
    rows.append(dict(name="pool", type="avgpool", stride=1, in_shape=[c, h, h],
                     out_shape=[c, 1, 1], macs=0, params=0, params_folded=0))
    fc = c * config.classes + config.classes
    rows.append(dict(name="fc", type="fc", stride=1, in_shape=[c], out_shape=[config.classes],
                     macs=c * config.classes, params=fc, params_folded=fc))
    return rows


def cost_summary(config: ModelConfig) -> dict:
    rows = layer_costs(config)
    bn = sum(2 * r["out_shape"][0] for r in rows if r["type"] in ("conv", "dw", "pw"))
    return dict(config.to_dict(),
                macs=sum(r["macs"] for r in rows),
                params=sum(r["params"] for r in rows),
                params_without_bn=sum(r["params"] for r in rows) - bn,
                params_folded=sum(r["params_folded"] for r in rows),
                layers=rows)


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, kernel, stride, groups):
        super().__init__()
        # No conv bias: the BN that follows has its own shift.
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class MobileNetV1(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        layers = OrderedDict()
        for layer in layer_plan(config):
            block = ConvBNReLU(layer["cin"], layer["cout"], layer["kernel"], layer["stride"],
                               layer["groups"])
            name, _, part = layer["name"].partition(".")
            if part:  # dw and pw of one depthwise separable block share a parent module
                layers.setdefault(name, nn.Sequential(OrderedDict()))
                layers[name].add_module(part, block)
            else:
                layers[name] = block
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(layer_plan(config)[-1]["cout"], config.classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


def param_count(model: nn.Module) -> int:
    """Trainable parameters, the cost model's `params` convention (BN buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
