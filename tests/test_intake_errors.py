"""Model intake rejects bad models and files with specific lipbound errors that name the op, layer or file."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import (
    InvalidModelError,
    LipboundError,
    ModelLoadError,
    ShapeMismatchError,
    UnsupportedOperatorError,
)
from lipbound.graph import trace
from lipbound.graph.load import load_inputs, load_model
from lipbound.graph.onnx_import import graph_from_onnx
from lipbound.graph.torchscript import graph_from_torchscript

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]


def _logsigmoid_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.LogSigmoid(), nn.Linear(4, 2)).eval()


def _onnx(model: nn.Module, shape: tuple[int, ...]) -> bytes:
    f = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, *shape),), f, dynamo=False, input_names=["x"], output_names=["y"])
    return f.getvalue()


def test_unsupported_module_fx_names_op_path_and_supported_list() -> None:
    with pytest.raises(UnsupportedOperatorError) as e:
        trace(_logsigmoid_net(), (3,))
    msg = str(e.value)
    assert "LogSigmoid" in msg and "'1'" in msg and "ReLU" in msg and "Linear" in msg


def test_unsupported_module_torchscript_names_op_path_and_supported_list() -> None:
    for ts in (torch.jit.script(_logsigmoid_net()), torch.jit.trace(_logsigmoid_net(), torch.zeros(2, 3))):
        with pytest.raises(UnsupportedOperatorError) as e:
            graph_from_torchscript(ts, (3,))
        msg = str(e.value)
        assert "aten::log_sigmoid" in msg and "'1'" in msg and "LogSigmoid" in msg and "aten::linear" in msg


def test_unsupported_onnx_op_names_type_node_and_supported_list() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1)).eval()
    with pytest.raises(UnsupportedOperatorError) as e:
        graph_from_onnx(_onnx(model, (3,)))
    msg = str(e.value)
    assert "Softmax" in msg and "/1/Softmax" in msg and "Gemm" in msg and "Conv" in msg


def test_nan_weight_names_the_layer() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[2].weight[1, 1] = float("nan")
    with pytest.raises(InvalidModelError, match=r"non-finite.*'2'"):
        trace(model, (3,))
    with pytest.raises(InvalidModelError, match=r"non-finite.*'2'"):
        graph_from_torchscript(torch.jit.trace(model, torch.zeros(2, 3)), (3,))
    with pytest.raises(InvalidModelError, match=r"non-finite.*Gemm"):
        graph_from_onnx(_onnx(model, (3,)))


def test_batchnorm_in_training_mode_is_bounded_in_eval_mode() -> None:
    """One policy for every intake (lipbound.graph.mode): an eval-mode copy is bounded, with a warning naming the
    module; the caller's model keeps its mode."""
    from lipbound.global_bounds import global_lipschitz
    from lipbound.graph.mode import TrainingModeWarning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 3)
    reference = copy.deepcopy(model).eval()
    with pytest.warns(TrainingModeWarning, match=r"2 BatchNorm/Dropout .*'1', '2'.*eval mode"):
        graph = trace(model, (3,))
    torch.testing.assert_close(graph(x), reference(x))
    assert model.training and model[1].training
    with pytest.warns(TrainingModeWarning, match=r"'1'"):
        ts_graph = graph_from_torchscript(torch.jit.script(model), (3,))
    torch.testing.assert_close(ts_graph(x), reference(x))
    with pytest.warns(TrainingModeWarning):
        g_train = global_lipschitz(model, method="product").upper
    assert g_train == global_lipschitz(reference, method="product").upper
    with pytest.warns(TrainingModeWarning):
        local = lipbound.local_lipschitz(model, x[:1], eps=0.1)
    assert torch.equal(local.upper, lipbound.local_lipschitz(reference, x[:1], eps=0.1).upper)


def test_onnx_batchnorm_training_mode_and_asymmetric_pads() -> None:
    from onnx import TensorProto, helper, numpy_helper

    def build(node, extra):
        g = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2, 4, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v, k) for k, v in extra.items()],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])

    ones = np.ones(2, np.float32)
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1)
    with pytest.raises(InvalidModelError, match="training mode"):
        graph_from_onnx(build(bn, {"s": ones, "b": ones, "m": ones, "v": ones}))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 0, 1, 1], name="conv_a")
    with pytest.raises(UnsupportedOperatorError, match=r"asymmetric.*conv_a"):
        graph_from_onnx(build(conv, {"w": np.ones((2, 2, 3, 3), np.float32)}))


def test_corrupt_and_missing_files(tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xfe" * 10)
    with pytest.raises(ModelLoadError, match=r"bad\.onnx"):
        graph_from_onnx(bad)
    with pytest.raises(ModelLoadError, match=r"bad\.onnx"):
        load_model(str(bad))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "missing.onnx"))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "missing.pt"))
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(str(tmp_path / "missing_model"))
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="not a TorchScript archive"):
        load_model(str(bad_pt))
    ckpt = tmp_path / "ckpt.pt"
    torch.save(nn.Linear(2, 2).state_dict(), ckpt)
    with pytest.raises(ModelLoadError, match=r"torch.save\(\) checkpoint"):
        load_model(str(ckpt))
    with pytest.raises(ModelLoadError, match="not found"):
        load_inputs(str(tmp_path / "x.npy"))
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(ModelLoadError, match="unsupported input file type"):
        load_inputs(str(tmp_path / "x.txt"))
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.zeros(2))
    with pytest.raises(ModelLoadError, match=r"\['a', 'b'\]"):
        load_inputs(str(tmp_path / "two.npz"))


def test_bad_factory_specs(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match=r"cannot import module 'no_such_pkg\.mod'"):
        load_model("no_such_pkg.mod:make")
    with pytest.raises(ModelLoadError, match=r"factory 'NoSuchNet' not found in module 'lipbound\.models'"):
        load_model("lipbound.models:NoSuchNet")
    with pytest.raises(ModelLoadError, match=r"not a callable returning an nn\.Module"):
        load_model("lipbound.models:SIMPLE_WIDTHS")
    with pytest.raises(ModelLoadError, match="weights file not found"):
        load_model("lipbound.models:DigitsMLP", weights=str(tmp_path / "none.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save(nn.Sequential(nn.Linear(64, 3)).state_dict(), wrong)
    with pytest.raises(ModelLoadError, match=r"do not fit model.*(missing keys|shape mismatch)"):
        load_model("lipbound.models:DigitsMLP", weights=str(wrong))
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": nn.Linear(2, 2)}, pickled)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_model("lipbound.models:DigitsMLP", weights=str(pickled))


def test_mismatched_input_shape(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with pytest.raises(ShapeMismatchError, match=r"\(5,\).*\[3\]"):
        graph_from_onnx(_onnx(model, (3,)), input_shape=(5,))
    with pytest.raises(LipboundError, match="linear"):
        graph_from_torchscript(torch.jit.script(model), (5,))
    graph = graph_from_onnx(_onnx(model, (3,)))
    with pytest.raises(ShapeMismatchError, match=r"\(5,\).*\(3,\)"):
        graph(torch.zeros(2, 5))


def test_unsupported_structures() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.lin(x)
            if bool(y.sum() > 0):
                return y
            return -y

    with pytest.raises(UnsupportedOperatorError, match=r"aten::sum.*Branchy"):
        graph_from_torchscript(torch.jit.script(Branchy().eval()), (3,))

    class Product(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    with pytest.raises(UnsupportedOperatorError, match="mul of two traced tensors"):
        graph_from_onnx(_onnx(Product().eval(), (3,)))
    with pytest.raises(UnsupportedOperatorError, match="mul of two traced tensors"):
        graph_from_torchscript(torch.jit.trace(Product().eval(), torch.zeros(2, 3)), (3,))

    class BatchMix(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1)

    with pytest.raises(UnsupportedOperatorError, match="batch dimension"):
        graph_from_torchscript(torch.jit.trace(BatchMix().eval(), torch.zeros(2, 3)), (3,))


class _LSTMHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 3, batch_first=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        y, _ = self.attn(x, x, x)
        return y.flatten(1)


@pytest.mark.parametrize(
    ("make", "layer", "scope"), [(_LSTMHead, "LSTM", "/rnn"), (_Attention, "MultiheadAttention", "/attn")]
)
def test_onnx_recurrent_and_attention_layers_are_named(make, layer, scope) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = _onnx(make().eval(), (5, 4))
    with pytest.raises(UnsupportedOperatorError) as e:
        graph_from_onnx(proto)
    msg = str(e.value)
    assert layer in msg and scope in msg and "Transpose" not in msg
    with pytest.raises(UnsupportedOperatorError, match=layer):  # the module intake names it too
        trace(make().eval(), (5, 4))
