"""Affine segments of a lipbound graph as structured linear operators, with rigorous error bounds.

A segment is the part of the graph between a *state* ``h`` (the network input or an activation's output) and the
next pre-activation ``z``: a DAG of :class:`~lipbound.ops.base.LinearOp` nodes (Linear, Conv2d, BatchNorm's
affine, reshapes, gathers, sums, constants), so ``z = A h + b``. The linear part ``A`` is never formed unless a
method asks for it:

* :meth:`AffineSegment.apply` / :meth:`AffineSegment.apply_t`: ``A x`` and ``A^T y`` on batches (the ops' own
  ``apply`` and ``apply_transpose``, the latter in reverse topological order);
* :meth:`AffineSegment.abs_apply`: the same chain with every op replaced by its entrywise absolute value ``|A_j|``;
* :meth:`AffineSegment.norm_upper`: certified ``||A||`` in l2 / l_inf without a dense matrix (see below);
* :meth:`AffineSegment.dense`: the dense matrix, refused above :data:`MAX_DENSE` entries before allocating it,
  together with an entrywise bound ``E`` of ``|A_hat - A|`` (``A`` the exact real map of the ops' parameters).

Rounding. A segment applies ops ``A_1, ..., A_k`` (a DAG; ``k`` its depth). In floating point
``fl(A_j X) = A_j X + D_j`` with ``|D_j| <= gamma_n |A_j| |X|`` (``gamma_n = n u / (1 - n u)``, ``n`` the most
products summed for one entry, :meth:`~lipbound.ops.base.LinearOp.max_terms`, ``u`` the unit roundoff of float64).
An op whose stored parameters are themselves rounded (``op.rel_error = eps``: BatchNorm's ``gamma / sqrt(var +
eps)``, AvgPool's ``1 / k^2``) equals ``D A_j`` for the exact map with ``D`` diagonal and ``|D - I| <= eps``.
By induction over the DAG the computed image of an exact input ``X`` satisfies

    |computed - A X| <= ((1 + g)^k - 1) |A_k| ... |A_1| |X|,      g = max_j (gamma_{n_j} + eps_j + gamma eps),

and the right-hand side is evaluated with the absolute-value chain (non-negative sums, rounding below
``(1 + gamma)^k``, covered by one more factor). Hence :meth:`dense` returns ``(A_hat, E)`` with ``|A_hat - A| <= E``,
and every global method adds ``||E||_F >= ||A_hat - A||_2`` (l2) or ``max row sum of E`` (l_inf) where it uses a norm.

Structured norms (no dense matrix): l_inf is ``max(|A_k| ... |A_1| 1)`` (rows sums of the absolute chain bound those
of ``|A|``); l2 is the minimum of ``sqrt(||A||_1 ||A||_inf)`` (Hoelder) and, for a chain of single-input ops, the
product of the ops' certified norms (a convolution by :func:`~lipbound.linalg.conv_operator_norm_upper`,
FFT symbol + Gram iteration, never a power iteration).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lipbound.errors import InvalidModelError
from lipbound.linalg import _U, conv_operator_norm_upper, matrix_norm_upper

#: entries of one dense matrix above which it is refused (estimated before any allocation)
MAX_DENSE = 200_000_000
#: entries up to which a segment's l2 norm uses its dense matrix (certified Gram iteration) rather than structure
DENSE_NORM_LIMIT = 4_000_000
#: rows of the identity pushed through a segment at once when it is densified (bounds the temporaries)
_CHUNK = 4096


def gamma(n: int) -> float:
    """``gamma_n = n u / (1 - n u)`` for float64."""
    nu = n * _U
    return nu / (1 - nu)


def refuse_dense(rows: int, cols: int, where: str, dtype: torch.dtype = torch.float64, what: str = "") -> None:
    """Raise :class:`InvalidModelError` if a dense ``rows x cols`` matrix exceeds :data:`MAX_DENSE` entries."""
    limit = MAX_DENSE  # read at call time: patchable (tests, callers)
    if rows * cols > limit:
        nbytes = rows * cols * torch.empty((), dtype=dtype).element_size()
        raise InvalidModelError(
            f"global bounds at {where!r} would expand an affine segment into a dense {rows} x {cols} matrix "
            f"({nbytes / 2**30:.1f} GiB, limit {limit} entries){what}; use method='product' or 'liplt' "
            "(structured), a smaller input size or the local engine"
        )


class AffineSegment:
    """``z = A h + b`` from state node ``src`` to node ``dst`` over the graph ``nodes`` (module docstring)."""

    def __init__(self, nodes: list[Any], src: Any, dst: Any, where: str) -> None:
        keep = {id(dst)}
        for n in reversed(nodes):
            if id(n) in keep:
                keep.update(id(i) for i in n.inputs)
        self.nodes = [n for n in nodes if id(n) in keep and n is not src]
        self.src, self.dst, self.where = src, dst, where
        self.in_shape: tuple[int, ...] = tuple(src.shape)
        self.out_shape: tuple[int, ...] = tuple(dst.shape)
        self.n_in, self.n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        self._dense: tuple[Tensor, Tensor] | None = None
        self._depth = self._chain_depth()
        g = 0.0
        for n in self.nodes:
            op = n.op
            if hasattr(op, "max_terms"):
                e = float(getattr(op, "rel_error", 0.0))
                gn = gamma(int(op.max_terms(_numel(n.inputs[0]) if n.inputs else 1, n.numel)) + 2)
                g = max(g, gn + e + gn * e)
        #: ``|computed - exact| <= rel * (absolute chain)`` for exact inputs (module docstring)
        self.rel = ((1 + g) ** (self._depth + 1) - 1) * (1 + 4 * _U) if self.nodes else 0.0

    # ------------------------------------------------------------------------------------------------ structure

    def _chain_depth(self) -> int:
        depth = {id(self.src): 0}
        for n in self.nodes:
            depth[id(n)] = 1 + max((depth.get(id(i), 0) for i in n.inputs), default=0)
        return depth.get(id(self.dst), 0)

    @property
    def ops(self) -> list[Any]:
        """The segment's ops in topological order."""
        return [n.op for n in self.nodes]

    def conv(self) -> Any:
        """The segment's convolution op if it is one ``Conv2dLayer`` plus reshapes, else ``None``."""
        from lipbound.ops.conv import Conv2dLayer
        from lipbound.ops.shape import Reshape

        convs = [o for o in self.ops if isinstance(o, Conv2dLayer)]
        rest = [o for o in self.ops if not isinstance(o, (Conv2dLayer, Reshape))]
        return convs[0] if len(convs) == 1 and not rest and not getattr(convs[0], "rel_error", 0.0) else None

    # ------------------------------------------------------------------------------------------------ maps

    def _run(self, x: Tensor, absolute: bool) -> Tensor:
        from lipbound.ops.base import ConstOp

        b = x.shape[0]
        env: dict[int, Tensor | None] = {id(self.src): x.reshape(b, *self.in_shape)}
        for n in self.nodes:
            if isinstance(n.op, ConstOp) or not n.inputs:
                env[id(n)] = None  # constants only enter the bias
                continue
            ins = [env.get(id(i)) for i in n.inputs]
            if all(v is None for v in ins):
                env[id(n)] = None
                continue
            ins = [
                torch.zeros(b, *i.shape, dtype=x.dtype, device=x.device) if v is None else v
                for v, i in zip(ins, n.inputs, strict=True)
            ]
            op = n.op.abs() if absolute else n.op
            env[id(n)] = op.apply(*ins)
        out = env[id(self.dst)]
        if out is None:
            return torch.zeros(b, self.n_out, dtype=x.dtype, device=x.device)
        return out.reshape(b, self.n_out)

    def apply(self, x: Tensor) -> Tensor:
        """``A x`` for ``x`` of shape ``(B, n_in)`` (or ``(B, *in_shape)``); returns ``(B, n_out)``."""
        return self._run(x, False) if self.nodes else x.reshape(x.shape[0], -1)

    def abs_apply(self, x: Tensor) -> Tensor:
        """``|A_k| ... |A_1| x`` (entrywise-absolute chain, an entrywise upper bound of ``|A| x`` for ``x >= 0``)."""
        return self._run(x, True) if self.nodes else x.reshape(x.shape[0], -1)

    def _vjp(self, y: Tensor, absolute: bool) -> Tensor:
        """Adjoint by the ops' own ``apply_transpose`` in reverse topological order (cotangents summed where a
        value feeds several ops); constants receive none."""
        from lipbound.ops.base import ConstOp

        b = y.shape[0]
        grads: dict[int, Tensor] = {id(self.dst): y.reshape(b, *self.out_shape)}
        for n in reversed(self.nodes):
            g = grads.pop(id(n), None)
            if g is None or isinstance(n.op, ConstOp) or not n.inputs:
                continue
            op = n.op.abs() if absolute else n.op
            for i, gi in zip(n.inputs, op.apply_transpose(g), strict=True):
                if isinstance(i.op, ConstOp):
                    continue
                grads[id(i)] = gi if id(i) not in grads else grads[id(i)] + gi
        g = grads.get(id(self.src))
        if g is None:
            return torch.zeros(b, self.n_in, dtype=y.dtype, device=y.device)
        return g.reshape(b, self.n_in)

    def apply_t(self, y: Tensor) -> Tensor:
        """``A^T y`` for ``y`` of shape ``(B, n_out)``; returns ``(B, n_in)``."""
        return self._vjp(y, False) if self.nodes else y

    def abs_apply_t(self, y: Tensor) -> Tensor:
        """``|A_1|^T ... |A_k|^T y``."""
        return self._vjp(y, True) if self.nodes else y

    # ------------------------------------------------------------------------------------------------ dense

    def dense(self) -> tuple[Tensor, Tensor]:
        """``(A_hat, E)``: the float64 ``(n_out, n_in)`` matrix and an entrywise bound of ``|A_hat - A|``.

        Built from the smaller side: identity rows pushed through :meth:`apply` (columns of ``A``) or, when
        ``A`` has fewer rows than columns, through :meth:`apply_t` (its rows); the rounding bound is the same."""
        if self._dense is None:
            refuse_dense(self.n_out, self.n_in, self.where)
            transpose = self.n_out < self.n_in
            n = self.n_out if transpose else self.n_in
            fwd, absf = (self.apply_t, self.abs_apply_t) if transpose else (self.apply, self.abs_apply)
            rows, errs = [], []
            with torch.no_grad():
                for s in range(0, n, _CHUNK):
                    m = min(_CHUNK, n - s)
                    eye = torch.zeros(m, n, dtype=torch.float64)
                    eye[torch.arange(m), s + torch.arange(m)] = 1.0
                    rows.append(fwd(eye))
                    errs.append(absf(eye) * self.rel if self.rel else torch.zeros_like(rows[-1]))
            w, e = torch.cat(rows), torch.cat(errs)
            self._dense = (w, e) if transpose else (w.T.contiguous(), e.T.contiguous())
        return self._dense

    def offset(self) -> Tensor:
        """``b = z(h = 0)``, shape ``(n_out,)`` (the ops' full affine forward on a zero state; constants included)."""
        from lipbound.ops.base import ConstOp

        env: dict[int, Tensor] = {id(self.src): torch.zeros(1, *self.in_shape, dtype=torch.float64)}
        with torch.no_grad():
            for n in self.nodes:
                if isinstance(n.op, ConstOp):
                    env[id(n)] = n.op.forward().to(torch.float64)
                else:
                    ins = [env[id(i)] if id(i) in env else i.op.forward().to(torch.float64) for i in n.inputs]
                    env[id(n)] = n.op.forward(*ins)
        return env[id(self.dst)].reshape(-1) if self.nodes else torch.zeros(self.n_out, dtype=torch.float64)

    def dense_size(self) -> int:
        return self.n_in * self.n_out

    # ------------------------------------------------------------------------------------------------ norms

    def inf_norm_upper(self) -> float:
        """Certified ``||A||_inf`` (max row l1 norm) from the absolute chain, no dense matrix."""
        if self.n_in == 0 or self.n_out == 0:
            return 0.0
        with torch.no_grad():
            r = self.abs_apply(torch.ones(1, self.n_in, dtype=torch.float64))
        return float(r.max()) * (1 + self.rel) * (1 + gamma(self._depth + 2) * max(self._depth, 1))

    def one_norm_upper(self) -> float:
        """Certified ``||A||_1`` (max column l1 norm)."""
        if self.n_in == 0 or self.n_out == 0:
            return 0.0
        with torch.no_grad():
            c = self.abs_apply_t(torch.ones(1, self.n_out, dtype=torch.float64))
        return float(c.max()) * (1 + self.rel) * (1 + gamma(self._depth + 2) * max(self._depth, 1))

    def chain_l2_upper(self) -> float:
        """Product of the ops' certified l2 norms if the segment is a chain of single-input ops, else ``inf``."""
        from lipbound.ops.arith import Affine, WeightedSum
        from lipbound.ops.base import ConstOp
        from lipbound.ops.conv import Conv2dLayer
        from lipbound.ops.indexing import Gather
        from lipbound.ops.linear import LinearLayer
        from lipbound.ops.shape import Reshape

        total = 1.0
        for n in self.nodes:
            op = n.op
            tracked = [i for i in n.inputs if not isinstance(i.op, ConstOp)]
            if len(tracked) != 1:
                return math.inf
            if isinstance(op, Conv2dLayer):
                v = conv_operator_norm_upper(op)
            elif isinstance(op, LinearLayer):
                refuse_dense(*op.weight.shape, self.where)
                v = matrix_norm_upper(op.weight.to(torch.float64), 2)
            elif isinstance(op, Affine):
                v = float(op.scale.abs().max()) if op.scale.numel() else 0.0
            elif isinstance(op, Reshape):
                v = 1.0
            elif isinstance(op, Gather):  # a 0/1 selection: ||S||_2 = sqrt(largest number of copies of one input)
                v = math.sqrt(float(op.fan_out))
            elif isinstance(op, WeightedSum) and len(n.inputs) == 1:
                v = abs(op.coeffs[0])
            elif type(op).__name__ == "FeatureMix":
                v = matrix_norm_upper(op.matrix.to(torch.float64), 2)
            else:
                return math.inf
            total *= v * (1 + float(getattr(op, "rel_error", 0.0))) * (1 + 4 * _U)
        return total

    def norm_upper(self, norm: str = "2") -> float:
        """Certified ``||A||`` of the exact map in l2 (``"2"``) or l_inf (``"inf"``), see the module docstring.

        l2: the dense certified norm plus ``||E||_F`` when the matrix has at most :data:`DENSE_NORM_LIMIT` entries
        (a lone convolution: its operator-norm bound, which is tighter), else structured bounds only.
        """
        if self.n_in == 0 or self.n_out == 0:
            return 0.0
        if norm == "inf":
            if self.dense_size() <= DENSE_NORM_LIMIT:
                w, e = self.dense()
                return (matrix_norm_upper(w, "inf") + float(e.sum(dim=1).max())) * (1 + 4 * _U)
            return self.inf_norm_upper()
        conv = self.conv()
        if conv is not None:
            return conv_operator_norm_upper(conv)
        if self.dense_size() <= DENSE_NORM_LIMIT:
            w, e = self.dense()
            iters = 30 if min(w.shape) <= 2048 else 12
            return (matrix_norm_upper(w, 2, max_iter=iters) + frobenius_upper(e)) * (1 + 4 * _U)
        holder = math.sqrt(self.one_norm_upper() * self.inf_norm_upper()) * (1 + 4 * _U)
        return min(holder, self.chain_l2_upper())


def frobenius_upper(e: Tensor) -> float:
    """An upper bound of ``||e||_F`` (float64, rounding covered)."""
    return float(torch.linalg.matrix_norm(e.to(torch.float64), "fro")) * (1 + gamma(e.numel() + 4))


def _numel(n: Any) -> int:
    return math.prod(n.shape)
