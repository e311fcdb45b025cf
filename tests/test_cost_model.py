"""MACs counted from ONNX graphs equal the cost model (an independent count)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_mnv1.model.data import Preprocessing
from edge_mnv1.errors import UsageError
from edge_mnv1.model.network import ModelConfig, MobileNetV1, cost_summary
from edge_mnv1.onnxio.cost import graph_costs
from edge_mnv1.onnxio.model_file import load_onnx
from edge_mnv1.onnxio.export import to_onnx


@pytest.mark.parametrize("alpha,res,batch", [(0.25, 64, 1), (0.5, 97, "dynamic"),
                                             (0.75, 131, 2), (1.0, 224, 1)])
def test_graph_macs_equal_cost_model(tmp_path, alpha, res, batch):
    config = ModelConfig(alpha, res, classes=1000)
    path = to_onnx(MobileNetV1(config).eval(), config, Preprocessing.imagenet(res),
                   tmp_path / "m.onnx", batch=batch)
    g, s = graph_costs(path), cost_summary(config)
    assert g["macs"] == s["macs"]
    assert [r["macs"] for r in g["layers"]] == [r["macs"] for r in s["layers"] if r["macs"]]
    assert g["params"] == s["params_folded"]  # BN folded: one bias per conv channel
    assert g["batch"] == (None if batch == "dynamic" else batch)
    assert [r["op"] for r in g["layers"]] == ["Conv"] * 27 + ["Gemm"]


def test_known_value_at_paper_baseline(tmp_path):
    config = ModelConfig(1.0, 224)
    path = to_onnx(MobileNetV1(config).eval(), config, Preprocessing.imagenet(224),
                   tmp_path / "m.onnx")
    assert graph_costs(path)["macs"] == 568_740_352


def _tiny(tmp_path, transB):
    """x[N,4] -> MatMul W1[4,6] -> Gemm (W2 [6,3] or its transpose) -> y[N,3]."""
    w1 = numpy_helper.from_array(np.ones((4, 6), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((3, 6) if transB else (6, 3), np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(3, np.float32), "b2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
         helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="gemm", transB=transB)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w1, w2, b2])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("transB", [0, 1])
def test_matmul_and_gemm(tmp_path, transB):
    g = graph_costs(_tiny(tmp_path, transB))
    assert [(r["name"], r["macs"], r["params"]) for r in g["layers"]] == \
        [("mm", 24, 24), ("gemm", 18, 21)]
    assert g["macs"] == 42 and g["batch"] is None


def test_load_onnx_refuses_other_files(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(UsageError, match="notes.onnx: not a valid ONNX model"):
        load_onnx(text)
    with pytest.raises(UsageError, match="missing.onnx: no such file"):
        load_onnx(tmp_path / "missing.onnx")


def test_load_onnx_checks_one_input_and_output_when_asked(tmp_path):
    """`info` counts any graph; compile and quantize feed one input and read one output."""
    path = _tiny(tmp_path, 0)
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 6]))
    onnx.save(model, path)
    assert len(load_onnx(path).graph.output) == 2
    with pytest.raises(UsageError, match="tiny.onnx: expected one input and one output"):
        load_onnx(path, one_input_output=True)
