"""Branch and Bound reuse of the parent's bounds and the branching score.

* ``bound_nodes(within=parent)`` intersects the recomputed bounds with bounds known on the region: the result is
  never looser than the parent's, still encloses every pre-activation value of the domain (sampled), and is
  strictly tighter than the child's own bounds somewhere on random split domains (otherwise the mechanism would
  be dead weight; element-wise it is not monotone: CROWN with tighter intermediate bounds can be looser);
* the branching score weights the gate's uncertainty by the pre-activation range: with equal gate widths the
  neuron with the larger range is split;
* Branch and Bound with and without the reuse reaches the exact MILP constant on a tiny net.
"""

from __future__ import annotations

import pytest
import torch
from tests.reference.exact import exact_local_lipschitz_milp
from tests.reference.nets import tiny_margin_problem
from torch import nn

import lipbound.bab as bab
from lipbound.bab import _evaluate, branch_and_bound, split_nodes
from lipbound.engine.forward import bound_nodes
from lipbound.graph.trace import trace


def _phases(nodes, assign: dict[int, tuple[int, int]]) -> dict[int, torch.Tensor]:
    """Phases (1, *shape) with ``assign[node position] = (element, +-1)``."""
    out = {}
    for i, z in enumerate(nodes):
        ph = torch.zeros(1, *z.shape, dtype=torch.int8)
        if i in assign:
            el, s = assign[i]
            ph.reshape(-1)[el] = s
        out[id(z)] = ph
    return out


def _domain_points(graph, nodes, xl, xu, phases, n: int, gen) -> dict[int, torch.Tensor]:
    """Pre-activation values at random points of the box that satisfy the phases (rejection sampling)."""
    x = xl + (xu - xl) * torch.rand(n, *xl.shape[1:], generator=gen, dtype=xl.dtype)
    vals = graph.forward(x)
    keep = torch.ones(n, dtype=torch.bool)
    for z in nodes:
        ph = phases[id(z)].reshape(1, -1)
        v = vals[id(z)].reshape(n, -1)
        keep &= ((ph > 0) & (v < 0) | (ph < 0) & (v > 0)).logical_not().all(1)
    return {id(z): vals[id(z)][keep] for z in nodes}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parent_intersection_is_never_looser_and_stays_sound(seed):
    model, _, _, x0, _ = tiny_margin_problem([3, 12, 12, 12, 2], seed)
    graph = trace(model, (3,)).to(torch.float64)
    nodes = split_nodes(graph)
    xl, xu = x0 - 0.5, x0 + 0.5
    gen = torch.Generator().manual_seed(seed)
    strict = looser = 0  # elements tighter / looser than the child computed alone
    for trial in range(8):
        # a parent domain with one split in the first layer, a child with one more split further down
        first = bound_nodes(graph, xl, xu, "crown")
        l0, u0 = first[id(nodes[0])]
        unstable0 = torch.nonzero((l0 < 0) & (u0 > 0)).flatten().tolist()[1::2]
        if not unstable0:
            continue
        e0 = unstable0[trial % len(unstable0)]
        s0 = 1 if trial % 2 else -1
        parent_ph = _phases(nodes, {0: (e0, s0)})
        parent = bound_nodes(graph, xl, xu, "crown", phases=parent_ph)
        l1, u1 = parent[id(nodes[1])]
        unstable1 = torch.nonzero((l1 < 0) & (u1 > 0)).flatten().tolist()
        if not unstable1:
            continue
        e1 = unstable1[(trial // 2) % len(unstable1)]
        child_ph = _phases(nodes, {0: (e0, s0), 1: (e1, -s0)})
        within = {id(z): parent[id(z)] for z in nodes}
        alone = bound_nodes(graph, xl, xu, "crown", phases=child_ph)
        both = bound_nodes(graph, xl, xu, "crown", phases=child_ph, within=within)
        pts = _domain_points(graph, nodes, xl, xu, child_ph, 4000, gen)
        for z in nodes:
            bl, bu = both[id(z)]
            pl, pu = parent[id(z)]
            assert bool((bl >= pl).all()) and bool((bu <= pu).all())  # never looser than the parent's
            al, au = alone[id(z)]
            strict += int((bl > al + 1e-9).sum() + (bu < au - 1e-9).sum())
            looser += int((bl < al - 1e-9).sum() + (bu > au + 1e-9).sum())
            v = pts[id(z)]
            if v.numel():  # every value of the child domain stays enclosed
                assert bool((v >= bl - 1e-12).all()) and bool((v <= bu + 1e-12).all())
    # the parent's bounds do tighten some child bounds; CROWN is not monotone in its intermediate bounds (a
    # tighter one can flip an adaptive ReLU slope), so some others come out looser than without the parent
    assert strict > 0 and looser >= 0


def test_branching_prefers_the_wider_pre_activation_on_equal_gate_widths():
    # z = (x, 3x) around 0: both unstable, the same upstream gradient 1; the second has three times the range
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [3.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        model[2].bias.zero_()
    graph = trace(model, (1,)).to(torch.float64)
    nodes = split_nodes(graph)
    xl, xu = torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)
    c = torch.ones(1, 1, 1, dtype=torch.float64)
    ev = _evaluate(graph, nodes, xl, xu, c, "inf", _phases(nodes, {}), False, 10, lp=False)
    assert ev.relu.tolist() == [[0, 1]]
    assert float(ev.upper[0]) == pytest.approx(4.0)  # |1| + |3| with both gates free: the exact value is 4


@pytest.mark.parametrize("reuse", [True, False])
def test_bab_is_exact_on_a_tiny_net_with_and_without_parent_reuse(reuse, monkeypatch):
    model, w, b, x0, c = tiny_margin_problem([3, 10, 10, 2], 7)
    xl, xu = x0 - 0.4, x0 + 0.4
    exact = exact_local_lipschitz_milp(w, b, xl[0].numpy(), xu[0].numpy(), c.numpy(), "inf")
    graph = trace(model, (3,)).to(torch.float64)
    monkeypatch.setattr(bab, "REUSE_PARENT", reuse)
    up, stats = branch_and_bound(graph, xl, xu, c.reshape(1, 1, -1), "inf", 0.0, time_budget=20)
    assert up >= exact * (1 - 1e-9) - 1e-12
    assert not stats.timed_out
    assert up == pytest.approx(exact, rel=2e-4)
