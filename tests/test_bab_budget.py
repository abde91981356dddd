"""Branch and Bound with one wall-clock budget and one queue for all (input, row) problems: the budget holds for the
whole call, time goes to the rows that decide each input's maximum, per-row results are sound against exact MILP
values (and equal to them well inside the budget), and the witness of every lower bound is a real point."""

from __future__ import annotations

import time

import pytest
import torch
from tests.reference.exact import exact_local_lipschitz_milp
from tests.reference.nets import tiny_margin_problem, tiny_relu_mlp

import lipbound
from lipbound.lower import dual_norm, gradients
from lipbound.problem import make_problem

# tiny_relu_mlp([2, 24, 24, 1], 1) on [0.3 - 1, 0.3 + 1]^2: exact l_inf local constant by the MILP of
# tests/reference/exact.py and by region enumeration (both agree to 1e-12; 7 s and 95 s, too slow to recompute here)
HARD_NET_EXACT = 4.952157381121815


def _hard_net():
    model, _, _ = tiny_relu_mlp([2, 24, 24, 1], 1)
    return model, torch.full((1, 2), 0.3, dtype=torch.float64), 1.0


def test_time_budget_is_the_whole_call_and_keeps_open_domains():
    model, x0, eps = _hard_net()
    budget = 1.5
    t0 = time.perf_counter()
    r = lipbound.local_lipschitz_bab(model, x0, eps, time_budget=budget, batch_domains=1)
    wall = time.perf_counter() - t0
    stats = r.details["bab"][0]
    assert wall < budget + 1.5, wall
    assert stats["timed_out"] and stats["domains_open"] > 0  # the budget really ran out: open domains kept
    assert stats["domains_evaluated"] > 1  # after some work
    assert stats["seconds"] <= wall + 1e-6
    assert r.upper.item() >= HARD_NET_EXACT * (1 - 1e-9)  # the anytime bound is sound
    assert r.lower.item() <= HARD_NET_EXACT * (1 + 1e-9)
    assert stats["upper"] == pytest.approx(r.upper.item(), rel=1e-9, abs=1e-12)
    crown = lipbound.local_lipschitz(model, x0, eps, use_global=False, lower=False)
    assert r.upper.item() < crown.upper.item()  # it did tighten the root bound


def test_a_tiny_budget_still_returns_the_root_bound_on_time():
    model, x0, eps = _hard_net()
    t0 = time.perf_counter()
    r = lipbound.local_lipschitz_bab(model, x0, eps, time_budget=0.05)
    assert time.perf_counter() - t0 < 0.05 + 1.5
    assert r.details["bab"][0]["timed_out"]
    assert r.upper.item() >= HARD_NET_EXACT * (1 - 1e-9)


def test_rows_and_inputs_are_sound_and_exact_well_inside_the_budget():
    model, w, b, x0, _ = tiny_margin_problem([3, 8, 8, 3], 5)
    xs = torch.cat([x0, x0.flip(1)])  # two inputs, three rows each, one queue
    eps = 0.3
    budget = 60.0
    t0 = time.perf_counter()
    r = lipbound.local_lipschitz_bab(model, xs, eps, time_budget=budget)
    wall = time.perf_counter() - t0
    assert wall < budget / 2  # closes well inside the budget (typically 2-6 s, most of it the lower-bound search)
    assert r.upper.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            cj = torch.zeros(3, dtype=torch.float64)
            cj[j] = 1.0
            lo, hi = (xs[i] - eps).numpy(), (xs[i] + eps).numpy()
            exact = exact_local_lipschitz_milp(w, b, lo, hi, cj.numpy(), "inf")
            stats = r.details["bab"][3 * i + j]
            assert (stats["input"], stats["row"]) == (i, j)
            assert r.upper[i, j].item() >= exact * (1 - 1e-9) - 1e-12
            assert r.lower[i, j].item() <= exact * (1 + 1e-9) + 1e-12
            assert not stats["timed_out"] and stats["domains_open"] == 0
            assert r.upper[i, j].item() == pytest.approx(exact, rel=2e-4)


def test_lower_bounds_are_attained_at_their_witness_points():
    model, _, _, x0, _ = tiny_margin_problem([3, 8, 8, 3], 5)
    eps = 0.3
    r = lipbound.local_lipschitz_bab(model, x0, eps, time_budget=20)
    pr = make_problem(model, x0, eps, None, None, None, torch.float64)
    pts = r.lower_point  # (1, 3, 3)
    assert bool(((pts >= pr.xl.unsqueeze(1) - 1e-12) & (pts <= pr.xu.unsqueeze(1) + 1e-12)).all())
    g = gradients(pr.graph, pts[0], pr.c[0])
    assert torch.allclose(dual_norm(g, "inf"), r.lower[0], rtol=1e-9, atol=1e-12)


def test_the_queue_gives_the_time_to_the_row_that_decides_the_max():
    model, _, _ = tiny_relu_mlp([3, 32, 32, 2], 1)
    with torch.no_grad():
        model[-1].weight[0] *= 10.0  # row 0 has ~10x the constant of row 1: it decides the max
        model[-1].bias[0] *= 10.0
    x0 = torch.full((1, 3), 0.3, dtype=torch.float64)
    r = lipbound.local_lipschitz_bab(model, x0, 1.0, time_budget=1.5)
    s0, s1 = r.details["bab"]
    assert s0["timed_out"]  # the deciding row did not close: it used the whole budget
    assert r.lower[0, 1] < r.upper[0, 1] < r.lower[0, 0]  # row 1 never decides the max
    assert s0["domains_evaluated"] > 10 * s1["domains_evaluated"]
    assert s0["seconds"] > 2 * s1["seconds"]
    assert r.upper_max.item() == pytest.approx(s0["upper"], rel=1e-9)


def test_max_domains_is_per_problem_and_deterministic():
    model, _, _, x0, _ = tiny_margin_problem([3, 8, 8, 3], 5)
    runs = [lipbound.local_lipschitz_bab(model, x0, 0.3, time_budget=60, max_domains=9) for _ in range(2)]
    for s in runs[0].details["bab"]:
        assert s["domains_evaluated"] <= 9 + 2 * 64  # stops at the first batch past the cap
    assert torch.equal(runs[0].upper, runs[1].upper)


def test_the_runner_task_reports_the_domains_explored():
    from lipbound.graph.trace import trace
    from lipbound.runner.tasks import TASKS

    model, _, _, x0, c = tiny_margin_problem([3, 8, 8, 3], 5)
    graph = trace(model, (3,)).to(torch.float64)
    out = TASKS["bab"].fn(graph, x0, 0.3, "inf", {"c": c, "time_budget": 20})
    assert out["domains"] > 1  # the key the runner summed did not exist before: it always reported 0
    assert out["lower"] <= out["upper"]
