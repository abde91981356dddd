"""Patch (convolutional) form of linear-bound coefficients over ``(C, H, W)`` nodes.

A back-substitution that starts from one element of a conv-shaped node and crosses a few convolutions touches
only that element's receptive field. Instead of a dense coefficient tensor ``Lambda`` of shape
``(B, S, C, H, W)`` (mostly zeros), :class:`Patches` keeps, for every specification row ``s``, a window

    Lambda[b, s, c, y, x] = data[b, s, c, y - ay_s, x - ax_s]   for 0 <= y - ay_s < ph, 0 <= x - ax_s < pw,

and zero elsewhere (``anchor[s] = (ay_s, ax_s)`` is the window's top-left corner in node coordinates; it may lie
outside the node, window entries outside the node are kept at zero). The exact rules of the engine become:

* elementwise relaxation / product with a node-shaped tensor ``T``: ``data * T`` read at the window
  (:meth:`Patches.gather`, zero outside the node);
* reductions ``<Lambda, T>`` (constants, rounding terms, the input box): sums over the window;
* back through ``v = conv(w)`` (a forward Conv2d node): ``Lambda_w = conv^T Lambda_v`` is the *full* transposed
  convolution of the window (:meth:`Patches.conv_transpose`), anchor ``a * stride - padding``;
* back through ``g_w = conv^T g_v`` (the Conv2d rule of a Jacobian graph): ``Lambda_{g_v} = conv Lambda_{g_w}``
  is a convolution of the window (:meth:`Patches.conv`): a stride-1 full convolution read with stride ``s`` from
  a per-row phase ``e``;
* anything else (Linear, reshape, sums of differently shaped windows, ...): :meth:`Patches.to_dense`.

Every rule computes the same sums of products as the dense rule, only without the zero terms, so the rounding
bounds of :mod:`lipbound.engine.rounding` (``max_terms`` of a conv = ``C_in k_h k_w``) hold unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class Patches:
    """Coefficients ``(B, S, C, H, W)`` stored as per-row windows ``data`` ``(B, S, C, ph, pw)`` at ``anchor``
    ``(S, 2)`` (module docstring). ``shape`` is the node's per-sample shape ``(C, H, W)``."""

    def __init__(self, data: Tensor, anchor: Tensor, shape: tuple[int, int, int], flat: bool = False) -> None:
        self.data, self.anchor, self.shape = data, anchor, tuple(shape)
        #: the node is the flattened ``(C * H * W,)`` view of ``shape`` (a reshape between a conv and a Linear)
        self.flat = flat

    # ------------------------------------------------------------------ construction / conversion
    @staticmethod
    def identity(shape: tuple[int, int, int], rows: Tensor, batch: int, like: Tensor) -> Patches:
        """Rows ``e_j`` (``j`` = flat indices ``rows`` into ``shape``) as 1x1 one-hot windows."""
        c, h, w = shape
        ch, pos = rows // (h * w), rows % (h * w)
        data = torch.zeros(len(rows), c, dtype=like.dtype, device=like.device)
        data[torch.arange(len(rows), device=like.device), ch] = 1
        data = data.reshape(1, len(rows), c, 1, 1).expand(batch, -1, -1, -1, -1)
        anchor = torch.stack((pos // w, pos % w), 1)
        return Patches(data, anchor, shape)

    @property
    def window(self) -> tuple[int, int]:
        return int(self.data.shape[-2]), int(self.data.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    def with_data(self, data: Tensor) -> Patches:
        return Patches(data, self.anchor, self.shape, self.flat)

    def reshaped(self, flat: bool) -> Patches:
        return Patches(self.data, self.anchor, self.shape, flat)

    def numel(self) -> int:
        return self.data.numel()

    def _index(self, pad: tuple[int, int, int, int]) -> tuple[Tensor, int]:
        """Flat indices ``(S, ph * pw)`` of the window entries in the node padded by ``pad`` (top, bottom, left,
        right), and the padded width."""
        ph, pw = self.window
        wp = self.shape[2] + pad[2] + pad[3]
        dev = self.anchor.device
        iy = self.anchor[:, :1] + pad[0] + torch.arange(ph, device=dev)
        ix = self.anchor[:, 1:] + pad[2] + torch.arange(pw, device=dev)
        return (iy[:, :, None] * wp + ix[:, None, :]).reshape(len(self.anchor), ph * pw), wp

    def _pads(self) -> tuple[int, int, int, int]:
        ph, pw = self.window
        _, h, w = self.shape
        if self.anchor.numel() == 0:
            return (0, 0, 0, 0)
        lo = self.anchor.amin(0).tolist()
        hi = (self.anchor.amax(0) + torch.tensor([ph, pw], device=self.anchor.device)).tolist()
        return (max(0, -lo[0]), max(0, hi[0] - h), max(0, -lo[1]), max(0, hi[1] - w))

    def gather(self, t: Tensor) -> Tensor:
        """``t`` (``(b, s, C, H, W)`` with ``b in {1, B}``, ``s in {1, S}``) read at every row's window, zero
        outside the node: shape ``(b, S, C, ph, pw)``."""
        n = self.shape[0] * self.shape[1] * self.shape[2]
        if self.flat and t.dim() >= 1 and t.shape[-1] == n:
            t = t.reshape(*t.shape[:-1], *self.shape)
        if t.dim() < 5:
            t = t.reshape((1,) * (5 - t.dim()) + tuple(t.shape))
        if t.shape[2:] != self.shape:
            t = t.expand(*t.shape[:2], *self.shape)
        pad = self._pads()
        tp = F.pad(t, (pad[2], pad[3], pad[0], pad[1])) if any(pad) else t
        idx, _ = self._index(pad)
        b, c = tp.shape[0], tp.shape[2]
        s = len(self.anchor)
        if tp.shape[1] == 1:  # shared by every row: one index_select over the flattened node
            out = tp.reshape(b, c, -1).index_select(2, idx.flatten())
            return out.reshape(b, c, s, *self.window).transpose(1, 2)
        flat = tp.reshape(b, tp.shape[1], c, -1).expand(b, s, c, -1)
        out = torch.gather(flat, 3, idx.reshape(1, s, 1, -1).expand(b, s, c, -1))
        return out.reshape(b, s, c, *self.window)

    def valid(self) -> Tensor:
        """Mask ``(S, 1, ph, pw)`` of the window entries that lie inside the node."""
        ph, pw = self.window
        _, h, w = self.shape
        dev = self.anchor.device
        iy = self.anchor[:, :1] + torch.arange(ph, device=dev)
        ix = self.anchor[:, 1:] + torch.arange(pw, device=dev)
        vy, vx = (iy >= 0) & (iy < h), (ix >= 0) & (ix < w)
        return (vy[:, :, None] & vx[:, None, :]).unsqueeze(1)

    def masked(self) -> Patches:
        """The same coefficients with the window entries outside the node set to zero."""
        return self.with_data(self.data * self.valid().to(self.dtype))

    def to_dense(self) -> Tensor:
        """The dense coefficients ``(B, S, C, H, W)`` (exact: every entry is copied once)."""
        b, s, c = self.data.shape[:3]
        _, h, w = self.shape
        pad = self._pads()
        idx, wp = self._index(pad)
        hp = h + pad[0] + pad[1]
        out = self.data.new_zeros(b, s, c, hp * wp)
        src = self.masked().data.reshape(b, s, c, -1)
        out.scatter_(3, idx.reshape(1, s, 1, -1).expand(b, s, c, -1), src)
        out = out.reshape(b, s, c, hp, wp)[:, :, :, pad[0] : pad[0] + h, pad[2] : pad[2] + w]
        return out.reshape(b, s, -1) if self.flat else out

    # ------------------------------------------------------------------ linear maps
    def conv_transpose(self, op) -> Patches:
        """``conv^T Lambda`` for a forward Conv2d node ``op`` (``self`` lives on its output): the full transposed
        convolution of every window, anchor ``a * stride - padding``."""
        b, s, c = self.data.shape[:3]
        ph, pw = self.window
        kh, kw = op.weight.shape[-2:]
        qh, qw = (
            (ph - 1) * op.stride[0] + (kh - 1) * op.dilation[0] + 1,
            (pw - 1) * op.stride[1] + (kw - 1) * op.dilation[1] + 1,
        )
        if _small(c * ph * pw * op.in_shape[0] * qh * qw, op.weight):
            m, out_win = _window_matrix(op, "transpose", (ph, pw), (0, 0))
            x = (self.data.reshape(b * s, -1) @ m).reshape(b, s, op.in_shape[0], *out_win)
        else:
            x = F.conv_transpose2d(
                self.data.reshape(b * s, c, ph, pw), op.weight, None, op.stride, 0, 0, op.groups, op.dilation
            )
            x = x.reshape(b, s, *x.shape[1:])
        st = torch.tensor(op.stride, device=self.anchor.device)
        pd = torch.tensor(op.padding, device=self.anchor.device)
        return Patches(x, self.anchor * st - pd, op.in_shape).masked()

    def conv(self, op) -> Patches:
        """``conv Lambda`` (``self`` lives on the conv's INPUT): the Jacobian graph's ``g_w = conv^T g_v`` rule.

        With ``K = (k - 1) d`` the output positions touching a window at ``a`` of size ``p`` start at
        ``o0 = (a + pad - K + e) / s`` with phase ``e = (K - a - pad) mod s``; the output window is the stride-1
        full convolution of the window read at ``e + j s`` (one matrix per phase, rows grouped by phase).
        """
        b, s, c = self.data.shape[:3]
        (ph, pw), dev = self.window, self.anchor.device
        kh, kw = op.weight.shape[-2:]
        kk = torch.tensor([(kh - 1) * op.dilation[0], (kw - 1) * op.dilation[1]], device=dev)
        st, pd = torch.tensor(op.stride, device=dev), torch.tensor(op.padding, device=dev)
        e = torch.remainder(kk - self.anchor - pd, st)
        o0 = torch.div(self.anchor + pd - kk + e, st, rounding_mode="floor")
        flat = self.data.reshape(b, s, -1)
        cout = op.out_shape[0]
        qh, qw = -(-(ph + int(kk[0])) // op.stride[0]), -(-(pw + int(kk[1])) // op.stride[1])
        if not _small(c * ph * pw * cout * qh * qw, op.weight):
            return self._conv_direct(op, e, o0)
        if op.stride == (1, 1):
            m, win = _window_matrix(op, "conv", (ph, pw), (0, 0))
            data = (flat.reshape(b * s, -1) @ m).reshape(b, s, cout, *win)
        else:
            code = e[:, 0] * op.stride[1] + e[:, 1]
            data = None
            for ph_code in torch.unique(code).tolist():
                rows = (code == ph_code).nonzero().flatten()
                m, win = _window_matrix(op, "conv", (ph, pw), (ph_code // op.stride[1], ph_code % op.stride[1]))
                part = flat.index_select(1, rows) @ m
                if data is None:
                    data = flat.new_zeros(b, s, m.shape[1])
                data[:, rows] = part
            data = data.reshape(b, s, cout, *win)
        return Patches(data, o0, op.out_shape).masked()

    def _conv_direct(self, op, e: Tensor, o0: Tensor) -> Patches:
        """:meth:`conv` by ``conv2d`` on the padded windows (large windows, where the matrix would be big)."""
        b, s, c = self.data.shape[:3]
        (ph, pw), dev = self.window, self.anchor.device
        kh, kw = op.weight.shape[-2:]
        big = [(kh - 1) * op.dilation[0], (kw - 1) * op.dilation[1]]
        x = F.pad(self.data.reshape(b * s, c, ph, pw), (big[1], big[1], big[0], big[0]))
        y = F.conv2d(x, op.weight, None, 1, 0, op.dilation, op.groups)  # (b*s, Cout, ph + K, pw + K)
        cout = y.shape[1]
        if op.stride == (1, 1):
            data = y.reshape(b, s, cout, *y.shape[2:])
        else:
            qh, qw = -(-(ph + big[0]) // op.stride[0]), -(-(pw + big[1]) // op.stride[1])
            ty, tx = y.shape[2] + op.stride[0] * qh, y.shape[3] + op.stride[1] * qw
            y = F.pad(y, (0, op.stride[1] * qw, 0, op.stride[0] * qh)).reshape(b, s, cout, ty * tx)
            iy = e[:, :1] + op.stride[0] * torch.arange(qh, device=dev)
            ix = e[:, 1:] + op.stride[1] * torch.arange(qw, device=dev)
            idx = (iy[:, :, None] * tx + ix[:, None, :]).reshape(1, s, 1, -1).expand(b, s, cout, -1)
            data = torch.gather(y, 3, idx).reshape(b, s, cout, qh, qw)
        return Patches(data, o0, op.out_shape).masked()


#: window convolutions use a dense window-to-window matrix up to this many bytes (else conv2d on the windows)
MATRIX_BYTES = 1 << 25
_MATRICES: dict = {}


def _small(entries: int, w: Tensor) -> bool:
    return entries * w.element_size() <= MATRIX_BYTES


def _window_matrix(op, kind: str, window: tuple[int, int], phase: tuple[int, int]) -> tuple[Tensor, tuple]:
    """Matrix ``M`` ``(C_a * ph * pw, C_b * qh * qw)`` with ``window_out = window_in @ M`` for every row (the map
    does not depend on the anchor), and the output window ``(qh, qw)``; built by applying the rule to the unit
    windows, so its entries are kernel weights or exact zeros (rounding as in the dense convolution)."""
    key = (id(op.weight), op.weight.dtype, kind, window, phase)
    hit = _MATRICES.get(key)
    if hit is not None and hit[0] is op.weight:
        return hit[1], hit[2]
    w = op.weight
    ph, pw = window
    if kind == "transpose":
        cin = w.shape[0]
        basis = torch.eye(cin * ph * pw, dtype=w.dtype, device=w.device).reshape(-1, cin, ph, pw)
        y = F.conv_transpose2d(basis, w, None, op.stride, 0, 0, op.groups, op.dilation)
    else:
        cin = op.in_shape[0]
        kh, kw = w.shape[-2:]
        big = ((kh - 1) * op.dilation[0], (kw - 1) * op.dilation[1])
        basis = torch.eye(cin * ph * pw, dtype=w.dtype, device=w.device).reshape(-1, cin, ph, pw)
        y = F.conv2d(F.pad(basis, (big[1], big[1], big[0], big[0])), w, None, 1, 0, op.dilation, op.groups)
        if op.stride != (1, 1):  # read the stride-1 output at phase + j * stride (zeros past its end)
            qh, qw = -(-(ph + big[0]) // op.stride[0]), -(-(pw + big[1]) // op.stride[1])
            y = F.pad(y, (0, op.stride[1] * qw, 0, op.stride[0] * qh))
            y = y[:, :, phase[0] :: op.stride[0], phase[1] :: op.stride[1]][:, :, :qh, :qw]
    m = y.reshape(y.shape[0], -1).contiguous()
    if sum(v[1].numel() * v[1].element_size() for v in _MATRICES.values()) > 4 * MATRIX_BYTES:
        _MATRICES.clear()
    _MATRICES[key] = (op.weight, m, tuple(y.shape[2:]))
    return m, tuple(y.shape[2:])


def linear_rows(lams: list[Patches], weight: Tensor, chunk_bytes: int = 1 << 26) -> list[Tensor]:
    """``lam @ W^T`` for windows on a flattened conv-shaped node and a dense ``W`` ``(out, C*H*W)``, for one or
    more coefficient sets with the same windows: the weight columns are read at every row's window once
    (``(out, S, C, ph, pw)``, in chunks of rows), so the dense ``(B, S, C*H*W)`` coefficients are never formed.
    Results ``(B, S, out)``."""
    ref = lams[0]
    s = ref.data.shape[1]
    w = weight.reshape(weight.shape[0], 1, *ref.shape)
    per_row = weight.shape[0] * ref.data[0, 0].numel() * weight.element_size()
    step = max(1, chunk_bytes // max(per_row, 1))
    outs: list[list[Tensor]] = [[] for _ in lams]
    for i in range(0, s, step):
        wg = Patches(ref.data[:1, i : i + step], ref.anchor[i : i + step], ref.shape).gather(w)
        wg = wg.flatten(2).permute(1, 2, 0)  # (s_i, C*ph*pw, out)
        for lam, out in zip(lams, outs, strict=True):
            part = lam.data[:, i : i + step].flatten(2).transpose(0, 1)  # (s_i, B, C*ph*pw)
            out.append(torch.bmm(part, wg).transpose(0, 1))
    return [torch.cat(o, 1) for o in outs]


def dense(lam: Tensor | Patches) -> Tensor:
    """``lam`` as a dense tensor."""
    return lam.to_dense() if isinstance(lam, Patches) else lam


def add(a: Tensor | Patches, b: Tensor | Patches) -> Tensor | Patches:
    """Sum of two coefficient sets of the same node (windows are kept when they coincide)."""
    same = isinstance(a, Patches) and isinstance(b, Patches) and a.flat == b.flat
    if same and a.data.shape == b.data.shape and torch.equal(a.anchor, b.anchor):
        return a.with_data(a.data + b.data)
    return dense(a) + dense(b)


def dot(lam: Tensor | Patches, t: Tensor, k: int, acc: torch.dtype) -> Tensor:
    """``<lam, t>`` over the ``k`` per-sample dims, in ``acc``; ``t`` broadcastable to ``(B, S, *shape)``."""
    if isinstance(lam, Patches):
        return (lam.data.to(acc) * lam.gather(t).to(acc)).sum(dim=(2, 3, 4))
    prod = lam.to(acc) * t.to(acc)
    return prod.sum(dim=tuple(range(prod.dim() - k, prod.dim()))) if k else prod
