"""Certified operator norms of dense matrices and 2-D convolutions: the shared low-level linear algebra.

This module sits just above :mod:`lipbound.errors` in the package layers (it imports nothing else from lipbound),
so the Lipschitz layers of :mod:`lipbound.nn` and the global bounds of :mod:`lipbound.global_bounds` both use it.
``lipbound.global_bounds.norms`` is an alias of this module.

Matrices (:func:`matrix_norm_upper`)
    * ``norm="inf"``: ``||W||_inf = max_i sum_j |W_ij|`` (exact, plus a rounding margin).
    * ``norm=2``: Gram iteration. ``G_0 = W``, ``G_{t+1} = G_t^H G_t`` so that ``sigma_max(G_t) = sigma_max(W)^(2^t)``
      and ``sigma_max(W) <= ||G_t||_F^(1/2^t)``, a bound that decreases to ``sigma_max(W)`` as ``t`` grows.
      Every iterate is rescaled to unit Frobenius norm (``N_t``, scale ``r_t``) and the scales are tracked, so
      nothing overflows. Rounding is accounted for: with ``P_t = fl(N_t^H N_t)`` and ``N_{t+1} = fl(P_t / r_{t+1})``,
      ``sigma(N_t)^2 <= r_{t+1} sigma(N_{t+1}) + delta_t`` where ``delta_t`` bounds the floating-point error of the
      product (``|fl(AB) - AB| <= gamma_m |A||B|``) and of the division; unrolling this from
      ``sigma(N_T) <= ||N_T||_F`` gives a bound that holds for the exact ``W``.

Convolutions (:func:`conv_operator_norm_upper`), cross-correlation as in ``torch.nn.Conv2d``
    * circular padding, stride 1: the 2-D DFT block-diagonalises the operator, so
      ``||conv|| = max_w sigma_max(K_hat(w))`` with ``K_hat(w) = sum_{a,b} K[:, :, a, b] exp(-2 pi i (d1 a w1 / N1 +
      d2 b w2 / N2))`` (``c_out x c_in`` per frequency); the maximum is bounded by Gram iteration batched over
      frequencies (real kernels: ``K_hat(-w) = conj(K_hat(w))``, so half the frequencies suffice).
    * stride ``s``: on a grid ``N`` divisible by ``s`` the strided circular conv is exactly a stride-1 circular
      conv on the grid ``N / s`` with ``c_in s1 s2`` input channels (polyphase split: tap ``t = d a`` reads phase
      ``t mod s`` at shift ``floor(t / s)``).
    * zero padding ``p``: embedding the input into a zero grid of size ``N >= n + 2p`` (a multiple of ``s``) and
      keeping the ``out`` valid outputs writes the zero-padded conv as ``S C_N E`` with ``E`` an isometry and ``S``
      a row selection, so ``||conv|| <= ||C_N||`` for every such ``N``; the minimum over a few ``N`` is used.
    * groups: the operator is block diagonal, the norm is the maximum over groups.
    * small inputs: the explicit (exactly assembled) sparse-pattern matrix with Gram iteration; "auto" takes the
      minimum of the valid bounds it computed.

The rounding error of the symbol evaluation is added: ``||K_hat_computed(w) - K_hat(w)||_2 <=
gamma ||sum_{a,b} |K[:, :, a, b]| ||_F``.

:func:`power_iteration_norm` gives a LOWER estimate (``||A v||`` for a unit ``v``) for tests and benchmarks; it is
never used in a certified bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, ShapeMismatchError, UnsupportedOperatorError

_U = 2.0**-53  # unit roundoff of float64

Norm = int | float | str


def parse_norm(norm: Norm) -> str:
    """Normalise a norm specification to ``"2"`` or ``"inf"``."""
    if norm in (2, 2.0, "2", "l2", "L2"):
        return "2"
    if norm in ("inf", "linf", "Linf", math.inf, float("inf")):
        return "inf"
    raise InvalidInputError(f"norm must be 2 or 'inf', got {norm!r}")


# --------------------------------------------------------------------------------------------- Gram iteration


def _fro(x: Tensor) -> Tensor:
    """Frobenius norm over the last two dims (float64, real)."""
    if x.is_complex():
        return torch.linalg.vector_norm(torch.view_as_real(x.resolve_conj()), dim=(-3, -2, -1))
    return torch.linalg.vector_norm(x, dim=(-2, -1))


def gram_sigma_upper(mats: Tensor, max_iter: int = 30, rtol: float = 1e-10, reduce_max: bool = False) -> Tensor:
    """Certified upper bounds of ``sigma_max`` of a batch of matrices ``(..., m, n)`` (real or complex).

    Returns a float64 tensor of shape ``(...)``, or a 0-d tensor with an upper bound of the maximum over the batch
    if ``reduce_max`` (entries whose bound falls below another entry's lower estimate ``||A v|| / ||v||`` are then
    dropped early, which is what makes frequency-batched convolution norms fast).

    Log-domain form of the recursion of the module docstring: with ``f_t = ||N_t||_F`` and ``sigma(N_t) >=
    f_t / sqrt(n)``, ``sigma(N_t) <= (r_{t+1} sigma(N_{t+1}))^(1/2) (1 + delta_t sqrt(n) / (r_{t+1} f_{t+1}))^(1/2)``,
    so ``log sigma(A) <= log r_0 + log(1 + e_0 sqrt(n) / f_0) + sum_{s<T} 2^-(s+1) [log r_{s+1} + log(1 + delta_s
    sqrt(n) / (r_{s+1} f_{s+1}))] + 2^-T log f_T``, updated in O(1) per iteration.
    """
    if mats.dim() < 2:
        raise ShapeMismatchError(f"gram_sigma_upper expects matrices (..., m, n), got shape {tuple(mats.shape)}")
    a = mats.detach().to(torch.complex128 if mats.is_complex() else torch.float64)
    if a.shape[-2] < a.shape[-1]:
        a = a.mH  # same singular values; the Gram matrices become the smaller side
    batch = a.shape[:-2]
    a = a.reshape(-1, a.shape[-2], a.shape[-1])
    nb, n = a.shape[0], a.shape[-1]
    if nb == 0 or n == 0:
        return torch.zeros(() if reduce_max else batch, dtype=torch.float64)
    k = 4.0 if a.is_complex() else 1.0  # complex arithmetic costs a few more roundings per operation
    sq_n = math.sqrt(n)
    fro0 = _fro(a)
    nonzero = fro0 > 0
    r0 = torch.where(nonzero, fro0, torch.ones_like(fro0))
    n_mat = a / r0[:, None, None].to(a.dtype)
    f0 = _fro(n_mat)
    f0 = torch.where(f0 > 0, f0, torch.ones_like(f0))
    # log of the bound without the last factor 2^-T log f_T
    acc = torch.log(r0) + math.log1p(2 * k * _U * sq_n * 1.01)
    best = fro0 * (1.0 + 2 * (a.shape[-1] * a.shape[-2] + 2) * _U)  # t = 0: sigma <= ||W||_F
    active = torch.arange(nb, device=a.device)
    prev_top = math.inf
    f_t = f0
    for t in range(max_iter):
        m_t = n_mat.shape[-2]
        p = n_mat.mH @ n_mat
        c = 2 * k * (m_t + 2) * _U * f_t**2
        r = _fro(p)
        r = torch.where(r > 0, r, torch.ones_like(r))
        n_mat = p / r[:, None, None].to(p.dtype)
        f_new = _fro(n_mat)
        f_new = torch.where(f_new > 0, f_new, torch.ones_like(f_new))
        delta = r * 2 * k * _U * f_new + c
        acc = acc + (torch.log(r) + torch.log1p(delta * sq_n / (r * f_new))) * 2.0 ** -(t + 1)
        f_t = f_new
        last = torch.log(f_new * (1.0 + 2 * (n * n + 2) * _U)) * 2.0 ** -(t + 1)
        bound = torch.exp(acc + last) * (1 + 1e-12)
        best[active] = torch.minimum(best[active], bound)
        top = float(best[nonzero].max()) if bool(nonzero.any()) else 0.0
        if reduce_max and active.numel() > 1:
            low = _lower_from_gram(a[active], n_mat)
            j = int(torch.argmax(low))
            keep = best[active] > float(low[j]) * (1 - 1e-9)
            keep[j] = True
            active, n_mat, acc, f_t = active[keep], n_mat[keep], acc[keep], f_t[keep]
        converged = prev_top - top <= rtol * top
        prev_top = top
        if t >= 2 and converged:
            break
    best = torch.where(nonzero, best, torch.zeros_like(best))
    if reduce_max:
        return best.max()
    return best.reshape(batch)


def _lower_from_gram(a: Tensor, n_mat: Tensor) -> Tensor:
    """Lower estimates ``||A v|| / ||v||`` with ``v`` the largest column of the (near rank-one) Gram iterate."""
    col = torch.diagonal(n_mat, dim1=-2, dim2=-1).real.argmax(dim=-1)  # PSD iterate: largest diagonal entry
    v = torch.gather(n_mat, 2, col[:, None, None].expand(-1, n_mat.shape[-2], 1))
    av, nv = _fro(a @ v), _fro(v)
    return (av / torch.where(nv > 0, nv, torch.ones_like(nv))).to(torch.float64) * (1 - 1e-12)


def matrix_norm_upper(W: Tensor, norm: Norm = 2, max_iter: int = 30) -> float:
    """Certified upper bound of ``||W||_2`` (Gram iteration) or ``||W||_inf`` (max row l1 norm) in float64."""
    if W.dim() != 2:
        raise ShapeMismatchError(f"matrix_norm_upper expects a 2-D matrix, got shape {tuple(W.shape)}")
    if not torch.isfinite(W).all():
        raise InvalidInputError(f"matrix of shape {tuple(W.shape)} has non-finite entries")
    w = W.detach().to(torch.float64)
    if parse_norm(norm) == "inf":
        if w.numel() == 0:
            return 0.0
        return float(w.abs().sum(dim=1).max()) * (1.0 + 2 * (w.shape[1] + 1) * _U)
    return float(gram_sigma_upper(w, max_iter=max_iter))


# ------------------------------------------------------------------------------------------ convolution specs


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution ``(C_in, H, W) -> (C_out, H', W')`` in ``torch.nn.Conv2d`` conventions."""

    weight: Tensor  # (c_out, c_in / groups, k1, k2), float64
    in_shape: tuple[int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding_mode: str = "zeros"

    @property
    def out_hw(self) -> tuple[int, int]:
        k = self.weight.shape[-2:]
        return tuple(
            (self.in_shape[1 + i] + 2 * self.padding[i] - self.dilation[i] * (k[i] - 1) - 1) // self.stride[i] + 1
            for i in range(2)
        )

    def grouped_weight(self) -> Tensor:
        """``(G, c_out / G, c_in / G, k1, k2)``."""
        w = self.weight
        return w.reshape(self.groups, w.shape[0] // self.groups, *w.shape[1:])

    def apply(self, x: Tensor) -> Tensor:
        """The convolution (no bias) on ``x`` of shape ``(B, C_in, H, W)``."""
        w = self.weight.to(x.dtype)
        if self.padding_mode == "circular":
            p = self.padding
            x = F.pad(x, (p[1], p[1], p[0], p[0]), mode="circular")
            return F.conv2d(x, w, None, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


def _is_conv_op(op) -> bool:
    """A lipbound 2-D convolution op: ``name == "conv2d"`` with weight, geometry and per-sample ``in_shape``."""
    attrs = ("weight", "stride", "padding", "dilation", "groups", "in_shape")
    return getattr(op, "name", None) == "conv2d" and all(hasattr(op, a) for a in attrs)


def _resolve_padding(padding, weight: Tensor, dilation) -> tuple[int, int]:
    """``nn.Conv2d``'s padding as two integers: "valid" -> 0, "same" -> half the dilated kernel extent."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        d = _pair(dilation)
        total = [d[i] * (weight.shape[2 + i] - 1) for i in range(2)]
        if any(t % 2 for t in total):
            raise UnsupportedOperatorError("Conv2d(padding='same')", "Conv2d", hint="asymmetric 'same' padding")
        return (total[0] // 2, total[1] // 2)
    return _pair(padding)


def conv_spec(
    conv,
    in_shape: tuple[int, ...] | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> ConvSpec:
    """Normalise a ``Conv2dLayer`` op, an ``nn.Conv2d`` or a raw weight (+ keyword geometry) into a :class:`ConvSpec`.

    ``in_shape`` is ``(C_in, H, W)`` or ``(H, W)``; it is taken from a ``Conv2dLayer`` when omitted.
    """
    if isinstance(conv, nn.Conv2d):
        padding = _resolve_padding(conv.padding, conv.weight, conv.dilation)
        weight, stride, dilation, groups = conv.weight, conv.stride, conv.dilation, conv.groups
        padding_mode = conv.padding_mode
    elif _is_conv_op(conv):  # lipbound.ops.conv.Conv2dLayer (not imported: the ops sit above this module)
        weight, stride, padding, dilation, groups = conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups
        in_shape = in_shape if in_shape is not None else conv.in_shape
    elif isinstance(conv, Tensor):
        weight = conv
    else:
        raise InvalidInputError(f"expected a Conv2dLayer, nn.Conv2d or weight tensor, got {type(conv).__name__}")
    if weight.dim() != 4:
        raise ShapeMismatchError(f"conv weight must be 4-D (c_out, c_in/groups, k1, k2), got {tuple(weight.shape)}")
    if in_shape is None:
        raise InvalidInputError("the operator norm of a convolution depends on the input size: pass in_shape=(C, H, W)")
    in_shape = tuple(int(s) for s in in_shape)
    groups = int(groups)
    if len(in_shape) == 2:
        in_shape = (weight.shape[1] * groups, *in_shape)
    if len(in_shape) != 3:
        raise ShapeMismatchError(f"in_shape must be (C, H, W) or (H, W), got {in_shape}")
    if in_shape[0] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ShapeMismatchError(
            f"conv weight {tuple(weight.shape)} with groups={groups} does not match input channels {in_shape[0]}"
        )
    if padding_mode not in ("zeros", "circular"):
        raise UnsupportedOperatorError(
            f"Conv2d(padding_mode={padding_mode!r})", "conv_operator_norm_upper", hint="zeros or circular only"
        )
    if not torch.isfinite(weight).all():
        raise InvalidInputError(f"conv weight of shape {tuple(weight.shape)} has non-finite entries")
    spec = ConvSpec(
        weight.detach().to(torch.float64),
        in_shape,
        _pair(stride),
        _pair(padding),
        _pair(dilation),
        groups,
        padding_mode,
    )
    if min(spec.out_hw) < 1:
        raise ShapeMismatchError(f"conv with kernel {tuple(weight.shape[-2:])} has no output on input {in_shape}")
    return spec


# ------------------------------------------------------------------------------------------- FFT (symbol) bound


def _phase_matrix(k: int, dil: int, s: int, m: int, freqs: Tensor) -> Tensor:
    """``P[u, r, a] = exp(-2 pi i q_a f_u / m)`` if tap ``a`` (offset ``t = dil a``) has phase ``t mod s == r``."""
    t = torch.arange(k, device=freqs.device) * dil
    q, r = (t // s).to(torch.float64), t % s
    ang = -2 * math.pi * torch.outer(freqs.to(torch.float64), q) / m  # (F, k)
    e = torch.polar(torch.ones_like(ang), ang)
    mask = (r[None, :] == torch.arange(s, device=freqs.device)[:, None]).to(torch.complex128)  # (s, k)
    return e[:, None, :] * mask[None, :, :]


def conv_symbol(spec: ConvSpec, grid: tuple[int, int]) -> Tensor:
    """Polyphase symbol of the circular strided conv on ``grid`` (each a multiple of the stride).

    Returns ``(G * F, c_out/G, c_in/G * s1 * s2)`` complex128 matrices over half the frequencies (real kernels).
    """
    s1, s2 = spec.stride
    m1, m2 = grid[0] // s1, grid[1] // s2
    kg = spec.grouped_weight().to(torch.complex128)
    dev = kg.device
    p1 = _phase_matrix(kg.shape[-2], spec.dilation[0], s1, m1, torch.arange(m1, device=dev))
    p2 = _phase_matrix(kg.shape[-1], spec.dilation[1], s2, m2, torch.arange(m2 // 2 + 1, device=dev))
    sym = torch.einsum("urA,vsB,goiAB->guvoirs", p1, p2, kg)
    g, f1, f2, co, ci = sym.shape[:5]
    return sym.reshape(g * f1 * f2, co, ci * s1 * s2)


def _symbol_rounding(spec: ConvSpec) -> float:
    """Bound of ``||K_hat_computed(w) - K_hat(w)||_2`` for every frequency (see module docstring)."""
    kg = spec.grouped_weight()
    taps = kg.shape[-1] * kg.shape[-2]
    absum = kg.abs().sum(dim=(-2, -1))  # (G, co, ci)
    return float(_fro(absum).max()) * 8 * (taps + 8) * _U


def _grids(spec: ConvSpec, n_grids: int) -> list[tuple[int, int]]:
    """Circular grid sizes on which the conv's norm is bounded (see module docstring)."""
    _, h, w = spec.in_shape
    s = spec.stride
    if spec.padding_mode == "circular":
        oh, ow = spec.out_hw
        if h % s[0] or w % s[1] or oh > h // s[0] or ow > w // s[1]:
            raise InvalidInputError(
                f"circular conv with stride {s}, padding {spec.padding} on {spec.in_shape} is not a circular "
                "strided convolution (outputs wrap around); only out = in / stride is supported"
            )
        return [(h, w)]
    base = [((n + 2 * p + st - 1) // st) * st for n, p, st in zip((h, w), spec.padding, s, strict=True)]
    return [(base[0] + j * s[0], base[1] + j * s[1]) for j in range(max(1, n_grids))]


def conv_norm_fft(spec: ConvSpec, n_grids: int = 3, max_iter: int = 30) -> float:
    """Certified bound via circular embeddings (minimum over ``n_grids`` valid grid sizes)."""
    err = _symbol_rounding(spec)
    best = math.inf
    for grid in _grids(spec, n_grids):
        sym = conv_symbol(spec, grid)
        best = min(best, float(gram_sigma_upper(sym, max_iter=max_iter, reduce_max=True)) + err)
    return best


# ------------------------------------------------------------------------------------------ dense (exact) bound


def conv_dense_matrices(spec: ConvSpec) -> Tensor:
    """The conv as explicit matrices per group, ``(G, c_out/G * H' * W', c_in/G * H * W)`` float64.

    Assembled by index arithmetic (entries are kernel values, no rounding). Circular padding wraps indices.
    """
    kg = spec.grouped_weight()
    g, co, ci, k1, k2 = kg.shape
    _, h, w = spec.in_shape
    oh, ow = spec.out_hw
    dev = kg.device
    o_c, o_i, o_j, c, a, b = torch.meshgrid(
        *(torch.arange(x, device=dev) for x in (co, oh, ow, ci, k1, k2)),
        indexing="ij",
    )
    y = o_i * spec.stride[0] - spec.padding[0] + a * spec.dilation[0]
    x = o_j * spec.stride[1] - spec.padding[1] + b * spec.dilation[1]
    if spec.padding_mode == "circular":
        y, x = y % h, x % w
        ok = torch.ones_like(y, dtype=torch.bool)
    else:
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    rows = ((o_c * oh + o_i) * ow + o_j)[ok]
    cols = ((c * h + y.clamp(0, h - 1)) * w + x.clamp(0, w - 1))[ok]
    out = torch.zeros(g, co * oh * ow, ci * h * w, dtype=torch.float64, device=dev)
    vals = kg[:, o_c[ok], c[ok], a[ok], b[ok]]  # (G, nnz)
    out.index_put_(
        (torch.arange(g, device=dev)[:, None], rows[None, :].expand(g, -1), cols[None, :].expand(g, -1)),
        vals,
        accumulate=True,
    )
    return out


def conv_dense_size(spec: ConvSpec) -> tuple[int, int]:
    """``(rows, cols)`` of one group's dense matrix."""
    g = spec.groups
    oh, ow = spec.out_hw
    return spec.weight.shape[0] // g * oh * ow, spec.in_shape[0] // g * spec.in_shape[1] * spec.in_shape[2]


def conv_norm_dense(spec: ConvSpec, max_iter: int = 30) -> float:
    """Certified bound via Gram iteration on the explicit matrix (accumulated duplicate taps round exactly only
    for circular wrap-around of large kernels; a relative margin covers that case)."""
    mats = conv_dense_matrices(spec)
    margin = 1.0 + 4 * spec.weight.shape[-1] * spec.weight.shape[-2] * _U
    return float(gram_sigma_upper(mats, max_iter=max_iter).max()) * margin


def conv_operator_norm_upper(
    conv,
    in_shape: tuple[int, ...] | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
    dense_limit: int = 1024,
    n_grids: int | None = None,
    max_iter: int = 30,
) -> float:
    """Certified upper bound of the l2 operator norm of a 2-D convolution on inputs of shape ``in_shape``.

    ``conv`` is a ``lipbound.ops.conv.Conv2dLayer`` (geometry and ``in_shape`` taken from it), an ``nn.Conv2d``
    (geometry from it, ``in_shape`` required) or a weight tensor with the geometry as arguments.
    ``method``: ``"fft"`` (circular embedding + frequency-batched Gram iteration), ``"dense"`` (explicit matrix),
    or ``"auto"`` (the minimum of both, dense only when a group's smaller side is ``<= dense_limit``).
    """
    spec = conv_spec(conv, in_shape, stride, padding, dilation, groups, padding_mode)
    if method not in ("auto", "fft", "dense"):
        raise InvalidInputError(f"method must be 'auto', 'fft' or 'dense', got {method!r}")
    if float(spec.weight.abs().max()) == 0.0:
        return 0.0
    bounds = []
    if n_grids is None:  # extra grid sizes tighten zero-padded bounds; use them when the symbol is small
        grid = _grids(spec, 1)[0]
        size = grid[0] * grid[1] // 2 * spec.weight.shape[0] * spec.weight.shape[1]
        n_grids = 3 if size <= 1_000_000 else 1
    if method in ("auto", "fft"):
        bounds.append(conv_norm_fft(spec, n_grids=n_grids, max_iter=max_iter))
    if method == "dense" or (method == "auto" and min(conv_dense_size(spec)) <= dense_limit):
        bounds.append(conv_norm_dense(spec, max_iter=max_iter))
    return min(bounds)


# ---------------------------------------------------------------------------------------- lower estimates


def _linear_map(op, in_shape, stride, padding, dilation, groups, padding_mode) -> tuple[Callable, tuple, Tensor]:
    """``(x -> A x, per-sample input shape, a tensor on A's device)`` for a matrix or a convolution."""
    if isinstance(op, Tensor) and op.dim() == 2:
        w = op.detach().to(torch.float64)
        return (lambda x: x @ w.T), (w.shape[1],), w
    spec = conv_spec(op, in_shape, stride, padding, dilation, groups, padding_mode)
    return spec.apply, spec.in_shape, spec.weight


def power_iteration_norm(
    op,
    in_shape: tuple[int, ...] | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    n_iter: int = 200,
    seed: int = 0,
) -> float:
    """A LOWER estimate of the l2 operator norm (``||A v||`` for the unit ``v`` reached by power iteration on
    ``A^T A``). ``op`` is a 2-D matrix or anything :func:`conv_operator_norm_upper` accepts. Not certified as an
    upper bound; converges to the norm from below."""
    fn, shape, ref = _linear_map(op, in_shape, stride, padding, dilation, groups, padding_mode)
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, *shape, generator=gen, dtype=torch.float64).to(ref.device)
    v = v / v.norm()
    for _ in range(n_iter):
        x = v.detach().requires_grad_(True)
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
        n = g.norm()
        if n == 0:
            return 0.0
        v = (g / n).detach()
    with torch.no_grad():
        return float(fn(v).norm())
