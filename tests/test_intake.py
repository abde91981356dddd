"""Model intake: torch.fx, ONNX and TorchScript graphs reproduce the model (and ONNX Runtime) on random inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from lipbound.graph import trace
from lipbound.graph.ir import Graph
from lipbound.graph.load import load_inputs, load_model
from lipbound.graph.onnx_import import graph_from_onnx, supported_onnx_ops
from lipbound.graph.torchscript import graph_from_torchscript
from lipbound.nn.activations import GroupSort, MaxMin

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]


class Residual(nn.Module):
    """conv -> BN -> relu, plus the skip connection, then avg-pool, dropout, view, scale and shift, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.pool = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x))) + x
        y = self.drop(self.pool(y))
        return self.head(y.view(y.size(0), -1) * 2.0 - 0.5)


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.LeakyReLU(0.2),
        nn.Linear(8, 8),
        nn.Sigmoid(),
        nn.Dropout(0.1),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Identity(),
        nn.Linear(8, 3),
    )


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.BatchNorm1d(8),
        nn.Linear(8, 3),
    )


MODELS = {
    "mlp": (_mlp, (4,)),
    "cnn": (_cnn, (2, 8, 8)),
    "residual": (Residual, (2, 4, 4)),
    "maxmin_halves": (lambda: nn.Sequential(nn.Linear(4, 8), MaxMin("halves"), nn.Linear(8, 2)), (4,)),
    "maxmin_pairs": (lambda: nn.Sequential(nn.Linear(4, 8), MaxMin("consecutive"), nn.Linear(8, 2)), (4,)),
    "groupsort4": (lambda: nn.Sequential(nn.Linear(4, 8), GroupSort(4), nn.Linear(8, 2)), (4,)),
}
SCRIPTABLE = {"mlp", "cnn", "residual"}  # lipbound.nn.GroupSort.forward is not TorchScript-compilable


def make(name: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, tuple[int, ...]]:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.to(dtype).eval(), shape


def onnx_bytes(model: nn.Module, shape: tuple[int, ...], **kw) -> bytes:
    f = io.BytesIO()
    example = torch.zeros(1, *shape, dtype=next(model.parameters()).dtype)
    torch.onnx.export(
        model,
        (example,),
        f,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        **kw,
    )
    return f.getvalue()


def inputs(shape: tuple[int, ...], dtype: torch.dtype, n: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return (2 * torch.randn(n, *shape, generator=gen, dtype=torch.float64)).to(dtype)


TOL = {torch.float32: 1e-5, torch.float64: 1e-9}


def _intake(kind: str, model: nn.Module, shape: tuple[int, ...]) -> Graph:
    if kind == "fx":
        return trace(model, shape)
    if kind == "onnx":
        return graph_from_onnx(onnx_bytes(model, shape))
    if kind == "jit_trace":
        return trace(torch.jit.trace(model, inputs(shape, next(model.parameters()).dtype, 2)), shape)
    return graph_from_torchscript(torch.jit.script(model), shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["fx", "onnx", "jit_trace", "jit_script"])
@pytest.mark.parametrize("name", list(MODELS))
def test_graph_reproduces_model(name: str, kind: str, dtype: torch.dtype) -> None:
    if kind == "jit_script" and name not in SCRIPTABLE:
        pytest.skip("GroupSort/MaxMin are not TorchScript-scriptable (traceable only)")
    model, shape = make(name, dtype)
    graph = _intake(kind, model, shape)
    assert graph.input_shape == shape
    x = inputs(shape, dtype)
    with torch.no_grad():
        want = model(x)
        got = graph(x)
    assert got.dtype == dtype
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])
    # a cast copy still computes the model
    other = torch.float64 if dtype == torch.float32 else torch.float32
    torch.testing.assert_close(graph.to(other)(x.to(other)), want.to(other), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_import_matches_onnxruntime(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, shape = make(name)
    data = onnx_bytes(model, shape)
    graph = graph_from_onnx(data)
    x = inputs(shape, torch.float32, 5)
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(graph(x).detach().numpy(), ref, atol=1e-5, rtol=1e-5)


def test_onnx_opsets_and_static_batch() -> None:
    """Older and newer opsets (Reshape/AveragePool/Squeeze forms differ) and a fixed batch size of 1 in the file."""
    model, shape = make("residual")
    x = inputs(shape, torch.float32)
    for opset in (11, 13, 17, 19, 20):
        graph = graph_from_onnx(onnx_bytes(model, shape, opset_version=opset))
        torch.testing.assert_close(graph(x), model(x), atol=1e-5, rtol=1e-5)
    f = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, *shape),), f, dynamo=False)  # batch dim fixed to 1 in the file
    torch.testing.assert_close(graph_from_onnx(f.getvalue())(x), model(x), atol=1e-5, rtol=1e-5)


def test_onnx_handwritten_ops() -> None:
    """Gemm with alpha/beta/transB, MatMul, Sub/Div/Neg/Mul by constants, Squeeze/Unsqueeze, Identity."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((5, 3)).astype(np.float32)  # transB=1: (out, in)
    w2 = rng.standard_normal((5, 4)).astype(np.float32)  # MatMul: (in, out)
    c1 = rng.standard_normal(5).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "c1"], ["g"], alpha=0.5, beta=2.0, transB=1),
        helper.make_node("LeakyRelu", ["g"], ["h"], alpha=0.1),
        helper.make_node("Sub", ["k", "h"], ["s"]),  # constant - node
        helper.make_node("Div", ["s", "k"], ["d"]),
        helper.make_node("Neg", ["d"], ["n"]),
        helper.make_node("Unsqueeze", ["n", "ax"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax"], ["q"]),
        helper.make_node("Identity", ["q"], ["i"]),
        helper.make_node("MatMul", ["i", "w2"], ["m"]),
        helper.make_node("Mul", ["m", "k"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(c1, "c1"),
        numpy_helper.from_array(np.array(3.0, dtype=np.float32), "k"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "ax"),
    ]
    g = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = graph_from_onnx(model)
    x = inputs((3,), torch.float64).numpy()
    h = 0.5 * x @ w1.T + 2.0 * c1
    h = np.where(h > 0, h, 0.1 * h)
    want = -((3.0 - h) / 3.0) @ w2 * 3.0
    np.testing.assert_allclose(graph(torch.from_numpy(x).float()).numpy(), want, atol=1e-4, rtol=1e-5)
    assert {"Gemm", "Conv", "Reshape", "BatchNormalization", "AveragePool"} <= set(supported_onnx_ops())


def test_onnx_dynamo_export() -> None:
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    model, shape = make("mlp")
    f = io.BytesIO()
    program = torch.onnx.export(model, (torch.zeros(2, *shape),), dynamo=True)
    program.model_proto and f.write(program.model_proto.SerializeToString())
    graph = graph_from_onnx(f.getvalue(), shape)
    x = inputs(shape, torch.float32)
    torch.testing.assert_close(graph(x), model(x), atol=1e-5, rtol=1e-5)


def test_imported_graphs_give_the_same_bounds() -> None:
    """fx, ONNX and TorchScript graphs of one model are the same network for the bound engine."""
    import lipbound

    model, shape = make("residual", torch.float64)
    x0 = inputs(shape, torch.float64, 2)
    ref = lipbound.local_lipschitz(model, x0, 0.05)
    for graph in (_intake("onnx", model, shape), _intake("jit_trace", model, shape)):
        r = lipbound.local_lipschitz(graph.to(torch.float64), x0, 0.05)
        torch.testing.assert_close(r.upper, ref.upper, atol=1e-4, rtol=1e-4)


def test_load_model_all_spec_kinds(tmp_path) -> None:
    model, shape = make("cnn")
    x = inputs(shape, torch.float32)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(onnx_bytes(model, shape))
    graph, got_shape = load_model(str(onnx_path))
    assert isinstance(graph, Graph) and got_shape == shape
    torch.testing.assert_close(graph(x), model(x), atol=1e-5, rtol=1e-5)

    ts_path = tmp_path / "m.pt"
    torch.jit.trace(model, x[:2]).save(str(ts_path))
    ts, ts_shape = load_model(str(ts_path))
    assert isinstance(ts, torch.jit.ScriptModule) and not ts.training
    assert ts_shape is None  # a saved archive records no input sizes: the caller takes them from x0
    assert load_model(str(ts_path), input_shape=shape)[1] == shape
    torch.testing.assert_close(trace(ts, shape)(x), model(x), atol=1e-5, rtol=1e-5)

    from lipbound.models import DigitsMLP

    torch.manual_seed(3)
    src = DigitsMLP()
    w_path = tmp_path / "w.pt"
    torch.save(src.state_dict(), w_path)
    loaded, _ = load_model("lipbound.models:DigitsMLP", weights=str(w_path), input_shape=(64,))
    assert isinstance(loaded, nn.Module)  # as the factory built it; intakes bound it in eval mode (graph.mode)
    xd = torch.rand(3, 64)
    torch.testing.assert_close(loaded(xd), src(xd))


def test_load_inputs_formats(tmp_path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x0=x, labels=np.arange(3))
    torch.save({"x": torch.from_numpy(x)}, tmp_path / "c.pt")
    for name in ("a.npy", "b.npz", "c.pt"):
        got = load_inputs(str(tmp_path / name))
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), x)
