"""Global bounds through the one model intake, on structured operators, within time budgets (issue 9 items 2, 4).

* the 16-channel 3x3 conv over 3x32x32 (a 16384 x 3072 dense matrix) goes through product, liplt, eclipse-fast
  (routed: its dense X would be 16384^2) and auto under a 4 GB address-space limit, above sampled gradient norms;
* the structured path equals the dense path on small convs (maps, adjoints, chain products, norms);
* a traced Graph with MaxMin (composite kept whole) gives the same values as the module;
* an activation declared by its op traits alone is bounded with its slope;
* every method honours ``time_budget``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import lipbound.global_bounds.segments as segments
from lipbound.errors import SolverError
from lipbound.global_bounds.api import METHODS, applicable, global_lipschitz
from lipbound.global_bounds.baselines import chain_product, liplt_bound, product_bound
from lipbound.global_bounds.network import extract
from lipbound.graph.trace import trace
from lipbound.nn import MaxMin

D = torch.float64


def test_large_conv_under_address_space_limit() -> None:
    code = textwrap.dedent(
        """
        import resource, torch
        from torch import nn
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
        from lipbound.global_bounds.api import global_lipschitz
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32 * 32, 10))
        m = m.double().eval()
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
        grads = []
        for i in range(4):
            j = torch.autograd.functional.jacobian(m, x[i : i + 1]).reshape(10, -1)
            grads.append(float(torch.linalg.matrix_norm(j, 2)))
        for method in ("product", "liplt", "eclipse-fast", "auto"):
            r = global_lipschitz(m, 2, method, input_shape=(3, 32, 32))
            assert r.upper >= max(grads) > 0, (method, r.upper, grads)
            print(method, r.method, r.upper, "|".join(r.details.get("fallbacks", [])))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
    assert set(lines) == {"product", "liplt", "eclipse-fast", "auto"}
    assert lines["eclipse-fast"].startswith("liplt") and "16384 x 16384" in lines["eclipse-fast"]
    assert float(lines["liplt"].split()[1]) < float(lines["product"].split()[1])


def _small_conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1, stride=2),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 3, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 4 * 4, 5),
        )
        .to(D)
        .eval()
    )


def test_structured_equals_dense_on_small_convs(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _small_conv()
    with torch.no_grad():
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(-2.0, 2.0)
    net = extract(m, (2, 8, 8))
    gen = torch.Generator().manual_seed(1)
    for seg in net.segments:
        w, e = seg.dense()
        x = torch.randn(3, seg.n_in, generator=gen, dtype=D)
        y = torch.randn(3, seg.n_out, generator=gen, dtype=D)
        assert torch.allclose(seg.apply(x), x @ w.T, rtol=1e-13, atol=1e-13)
        assert torch.allclose(seg.apply_t(y), y @ w, rtol=1e-13, atol=1e-13)
        assert float(e.max()) < 1e-12 * float(w.abs().max())  # rounding bound: tiny, non-zero
    p, _e = chain_product(net, 0, 2)
    assert torch.allclose(p, net.weights[2] @ net.weights[1] @ net.weights[0], rtol=1e-12, atol=1e-13)
    dense = {nrm: product_bound(net, nrm).upper for nrm in ("2", "inf")}
    liplt_dense = liplt_bound(net, "2").upper
    monkeypatch.setattr(segments, "DENSE_NORM_LIMIT", 0)  # every segment norm structured
    structured = extract(m, (2, 8, 8))
    assert product_bound(structured, "inf").upper == pytest.approx(dense["inf"], rel=1e-12)
    # l2: the conv segment uses its operator-norm bound either way; conv + BatchNorm: product of op bounds
    s2 = product_bound(structured, "2").upper
    assert dense["2"] <= s2 <= 3 * dense["2"]
    assert liplt_bound(structured, "2").upper >= liplt_dense * (1 - 1e-12)
    assert structured.segments[1].norm_upper("2") == pytest.approx(net.segments[1].norm_upper("2"), rel=1e-12)


def test_graph_with_maxmin_goes_through_the_intake() -> None:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(6, 8), MaxMin(), nn.Linear(8, 8), MaxMin(), nn.Linear(8, 3)).to(D).eval()
    g = trace(m, (6,))
    assert len(g.meta["composites"]) == 2
    net = extract(g)
    assert [a.kind for a in net.activations] == ["maxmin", "maxmin"] and net.dims == [6, 8, 8, 3]
    for norm in ("2", "inf"):
        for method in ("product", "lipsdp-nsr"):
            a = global_lipschitz(g, norm, method).upper
            assert a == pytest.approx(global_lipschitz(m, norm, method).upper, rel=1e-6)


def test_activation_from_traits_only() -> None:
    """An activation the global code has never heard of: its op's traits (slope [0, 1/2]) are all it reads."""
    from lipbound.ops.base import ElementwiseOp, Traits
    from lipbound.ops.catalog import REGISTRY

    class HalfTanhOp(ElementwiseOp):
        name = "half_tanh"

        def traits(self) -> Traits:
            return Traits(slope=(0.0, 0.5), smooth=True, global_kind="half_tanh")

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return 0.5 * torch.tanh(z)

    class HalfTanh(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return 0.5 * torch.tanh(z)

    REGISTRY.modules[HalfTanh] = lambda b, mod, args, kwargs: b.add(HalfTanhOp(), [args[0]])
    try:
        torch.manual_seed(2)
        m = nn.Sequential(nn.Linear(4, 6), HalfTanh(), nn.Linear(6, 2)).to(D).eval()
        net = extract(m, (4,))
        assert net.activations[0].kind == "half_tanh" and net.activations[0].slope == (0.0, 0.5)
        r = global_lipschitz(m, 2, "product", input_shape=(4,))
        ref = 0.5 * torch.linalg.matrix_norm(m[0].weight, 2) * torch.linalg.matrix_norm(m[2].weight, 2)
        assert float(ref) <= r.upper <= float(ref) * (1 + 1e-6)
        sdp = global_lipschitz(m, 2, "lipsdp-neuron", input_shape=(4,))
        x = torch.randn(64, 4, dtype=D)
        jac = torch.func.vmap(torch.func.jacrev(m))(x)
        assert float(torch.linalg.matrix_norm(jac, 2).max()) <= sdp.upper <= r.upper * (1 + 1e-6)
    finally:
        del REGISTRY.modules[HalfTanh]


@pytest.mark.parametrize("method", METHODS)
def test_time_budget_honoured(method: str) -> None:
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).to(D).eval()
    net = extract(m, (16,))
    if applicable(net, "2")[method] is not None:
        pytest.skip("not applicable")
    for budget in (1e-6, 2.0):
        t0 = time.perf_counter()
        try:
            r = global_lipschitz(net, 2, method, time_budget=budget)
        except SolverError as e:
            assert "time_budget" in str(e) or "failed" in str(e)
        else:
            assert r.upper > 0
        assert time.perf_counter() - t0 <= budget + 3.0


def test_auto_shares_its_time_budget() -> None:
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).to(D).eval()
    net = extract(m, (16,))
    t0 = time.perf_counter()
    r = global_lipschitz(net, 2, "auto", time_budget=1e-3)
    assert time.perf_counter() - t0 < 3.0
    assert r.method == "product" and r.upper == global_lipschitz(net, 2, "product").upper
    assert all("time_budget" in r.details["skipped"][m] for m in ("liplt", "eclipse-fast", "lipsdp-neuron"))


def test_torchscript_model_through_the_same_intake() -> None:
    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(D).eval()
    scripted = torch.jit.script(m)
    for method in ("product", "lipsdp-neuron"):
        a = global_lipschitz(scripted, 2, method, input_shape=(5,)).upper
        assert a == pytest.approx(global_lipschitz(m, 2, method, input_shape=(5,)).upper, rel=1e-6)


def test_unsupported_operator_errors_come_from_the_intake() -> None:
    """An op the registry does not know gets the same error as in the local engine; a registered op that is not
    affine or a global activation (Softplus has no global_kind) is named with the registry's list."""
    import lipbound
    from lipbound.errors import UnsupportedOperatorError

    m = nn.Sequential(nn.Linear(3, 4), nn.LogSigmoid(), nn.Linear(4, 1)).to(D).eval()
    with pytest.raises(UnsupportedOperatorError) as local:
        lipbound.local_lipschitz(m, torch.zeros(1, 3, dtype=D), eps=0.1)
    with pytest.raises(UnsupportedOperatorError) as glob:
        global_lipschitz(m, 2, "product", input_shape=(3,))
    assert "LogSigmoid" in str(glob.value) and str(glob.value).split("(")[0] == str(local.value).split("(")[0]
    sp = nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 1)).to(D).eval()
    with pytest.raises(UnsupportedOperatorError, match=r"softplus.*global_kind.*Supported: .*Linear"):
        global_lipschitz(sp, 2, "product", input_shape=(3,))
