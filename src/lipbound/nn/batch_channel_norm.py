"""Batch-Channel Normalization (Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization"): a batch normalization whose statistics are estimated across micro-batches, followed by a
channel (group) normalization with per-GROUP affine parameters.

For ``x`` of shape ``(N, C, H, W)``, channels ``c``, ``G`` groups of ``C/G`` consecutive channels, sample ``n``::

    x_hat_c = gamma_b,c (x_c - mu_c) / sqrt(var_c + eps) + beta_b,c              (per channel)
    x_dot   = gamma_g (x_hat - mu_{n,g}) / sqrt(var_{n,g} + eps) + beta_g         (per sample and group)

``mu_{n,g}``, ``var_{n,g}``: mean and biased variance of ``x_hat`` over the ``C/G`` channels and all pixels of
group ``g`` of sample ``n``. ``gamma_g, beta_g`` have shape ``(G,)`` (nn.GroupNorm has one per channel).

Statistics ``mu_c, var_c`` (``estimated=True``, EstBN, for micro-batches), per training step with rate
``r = momentum`` and the running estimates ``m, s`` (buffers ``running_mean``, ``running_var``)::

    mu_B = mean_{n,h,w} x_c,      v_B = mean_{n,h,w} (x_c - m_old)^2    (deviation from the OLD running mean)
    m <- (1 - r) m + r mu_B,      s <- (1 - r) s + r v_B
    normalize with mu_c = m, var_c = s (the updated estimates; no gradient flows through them).

``estimated=False``: ordinary batch normalization (batch statistics in training, running statistics at eval).
In eval mode the layer is the fixed per-channel affine map ``a_c x + b_c``, ``a_c = gamma_b,c / sqrt(s_c + eps)``,
``b_c = beta_b,c - m_c a_c`` (:meth:`batch_affine`), followed by the group normalization above.

Certified bounds: the group normalization is nonlinear per sample and its Jacobian norm can reach
``max|gamma_g| / sqrt(eps)`` (at ``x_hat`` constant on a group): only local bounds are informative. In eval mode
the forward is written with ``F.batch_norm`` (eval) and ``F.group_norm`` so the bound engine sees those two ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from lipbound.errors import InvalidInputError, ShapeMismatchError


class BatchChannelNorm2d(nn.Module):
    """Batch-Channel Normalization for ``(N, C, H, W)`` inputs (see the module docstring).

    Args:
        num_channels: ``C``.
        num_groups: ``G``, must divide ``C`` (default 32, the paper's).
        eps: added to both variances, inside the square root (``>= 0``).
        momentum: the estimate update rate ``r`` in ``(0, 1]``.
        estimated: EstBN micro-batch estimates (default) or ordinary batch statistics.
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        momentum: float = 0.1,
        estimated: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if num_channels < 1 or num_groups < 1 or num_channels % num_groups:
            raise InvalidInputError(
                f"BatchChannelNorm2d: num_groups={num_groups} must be >= 1 and divide num_channels={num_channels}"
            )
        if not eps >= 0:
            raise InvalidInputError(f"BatchChannelNorm2d: eps must be >= 0, got {eps}")
        if not 0 < momentum <= 1:
            raise InvalidInputError(f"BatchChannelNorm2d: momentum must be in (0, 1], got {momentum}")
        kw = {"device": device, "dtype": dtype}
        self.num_channels, self.num_groups = int(num_channels), int(num_groups)
        self.eps, self.momentum, self.estimated = float(eps), float(momentum), bool(estimated)
        self.weight = nn.Parameter(torch.ones(num_channels, **kw))  # gamma_b
        self.bias = nn.Parameter(torch.zeros(num_channels, **kw))  # beta_b
        self.group_weight = nn.Parameter(torch.ones(num_groups, **kw))  # gamma_g
        self.group_bias = nn.Parameter(torch.zeros(num_groups, **kw))  # beta_g
        self.register_buffer("running_mean", torch.zeros(num_channels, **kw))
        self.register_buffer("running_var", torch.ones(num_channels, **kw))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def batch_affine(self) -> tuple[Tensor, Tensor]:
        """Eval-mode batch part as ``(a, b)`` with ``x_hat_c = a_c x_c + b_c`` (shapes ``(C,)``)."""
        a = self.weight / torch.sqrt(self.running_var + self.eps)
        return a, self.bias - self.running_mean * a

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ShapeMismatchError(
                f"BatchChannelNorm2d({self.num_channels}) expects (N, {self.num_channels}, H, W), got {tuple(x.shape)}"
            )

    def _estimate(self, x: Tensor) -> None:
        r = self.momentum
        with torch.no_grad():
            mu_b = x.mean(dim=(0, 2, 3))
            v_b = (x - self.running_mean.view(1, -1, 1, 1)).pow(2).mean(dim=(0, 2, 3))
            self.running_mean.mul_(1 - r).add_(mu_b, alpha=r)
            self.running_var.mul_(1 - r).add_(v_b, alpha=r)
            self.num_batches_tracked.add_(1)

    def _channel_norm(self, xh: Tensor) -> Tensor:
        g = self.num_groups
        if self.eps == 0 and not isinstance(xh, fx.Proxy):
            var = xh.reshape(xh.shape[0], g, -1).var(dim=2, unbiased=False)
            if bool((var == 0).any()):
                raise InvalidInputError(
                    "BatchChannelNorm2d with eps=0: a group of the input has zero variance (division by zero); "
                    "use eps > 0"
                )
        k = self.num_channels // g
        return F.group_norm(
            xh, g, self.group_weight.repeat_interleave(k), self.group_bias.repeat_interleave(k), self.eps
        )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if self.training:
            if isinstance(x, fx.Proxy):
                raise InvalidInputError("BatchChannelNorm2d in training mode has no per-sample map: call .eval()")
            if self.estimated:
                self._estimate(x)
                if self.eps == 0 and bool((self.running_var == 0).any()):
                    raise InvalidInputError("BatchChannelNorm2d with eps=0: a channel has zero variance; use eps > 0")
                xh = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
            else:
                self.num_batches_tracked.add_(1)
                xh = F.batch_norm(
                    x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps
                )
        else:
            xh = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self._channel_norm(xh)

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, momentum={self.momentum}, "
            f"estimated={self.estimated}"
        )
