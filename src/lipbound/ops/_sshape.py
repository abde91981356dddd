"""Linear relaxation shared by S-shaped activations (tanh, sigmoid): convex on ``z < 0``, concave on ``z > 0``.

On ``[l, u]``:
* ``u <= 0`` (convex part): upper = chord, lower = tangent at the midpoint;
* ``l >= 0`` (concave part): lower = chord, upper = tangent at the midpoint;
* ``l < 0 < u``: upper = the chord if its slope is ``<= sigma'(u)``, else the tangent at ``d in (0, u]`` that
  passes through ``(l, sigma(l))``; lower = mirror image. ``d`` is found by bisection on
  ``sigma(d) + sigma'(d) (l - d) - sigma(l)`` (its sign changes once on ``[0, u]``), and the bisection keeps the
  endpoint on the valid side, so the line is a sound bound even when not fully converged.
The derivative ``sigma'`` is even and decreasing in ``|z|``: its range on ``[l, u]`` is
``[min(sigma'(l), sigma'(u)), sigma'(clamp(0, l, u))]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lipbound.ops.base import chord_relaxation

Fn = Callable[[Tensor], Tensor]


def _tangent(f: Fn, df: Fn, d: Tensor) -> tuple[Tensor, Tensor]:
    s = df(d)
    return s, f(d) - s * d


def _tangent_through(f: Fn, df: Fn, anchor: Tensor, lo: Tensor, hi: Tensor, iters: int = 40) -> Tensor:
    """Tangent point ``d`` in [lo, hi] whose tangent passes through ``(anchor, f(anchor))``, picking the side
    where the tangent stays a valid bound (the side farther from ``anchor``)."""
    fa = f(anchor)
    # h(d) = f(d) + f'(d)(anchor - d) - f(anchor); valid tangents are those with h(d) of the sign at 'far'
    far = torch.where((hi - anchor).abs() > (lo - anchor).abs(), hi, lo)
    near = torch.where((hi - anchor).abs() > (lo - anchor).abs(), lo, hi)
    h_far = f(far) + df(far) * (anchor - far) - fa
    for _ in range(iters):
        mid = (far + near) / 2
        h_mid = f(mid) + df(mid) * (anchor - mid) - fa
        same = torch.sign(h_mid) == torch.sign(h_far)
        far = torch.where(same, mid, far)
        near = torch.where(same, near, mid)
    return far


def sshape_relax(f: Fn, df: Fn, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    fl, fu = f(l), f(u)
    cw, cb = chord_relaxation(fl, fu, l, u)
    mw, mb = _tangent(f, df, (l + u) / 2)
    convex, concave = u <= 0, l >= 0
    mixed = ~(convex | concave)
    zero = torch.zeros_like(l)
    # mixed case, upper: chord if valid, else tangent through (l, f(l)) at d in [0, u]
    chord_ok_up = cw <= df(u)
    d_up = _tangent_through(f, df, l, torch.where(mixed, zero, l), torch.where(mixed, u, u))
    tw_up, tb_up = _tangent(f, df, d_up)
    chord_ok_lo = cw <= df(l)
    d_lo = _tangent_through(f, df, u, torch.where(mixed, l, l), torch.where(mixed, zero, u))
    tw_lo, tb_lo = _tangent(f, df, d_lo)
    uw = torch.where(convex, cw, torch.where(concave, mw, torch.where(chord_ok_up, cw, tw_up)))
    ub = torch.where(convex, cb, torch.where(concave, mb, torch.where(chord_ok_up, cb, tb_up)))
    lw = torch.where(convex, mw, torch.where(concave, cw, torch.where(chord_ok_lo, cw, tw_lo)))
    lb = torch.where(convex, mb, torch.where(concave, cb, torch.where(chord_ok_lo, cb, tb_lo)))
    return lw, lb, uw, ub


def sshape_derivative_bounds(df: Fn, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    dl = torch.minimum(df(l), df(u))
    du = df(torch.clamp(torch.zeros_like(l), l, u))
    return dl, du
