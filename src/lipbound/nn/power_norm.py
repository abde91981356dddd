"""PowerNorm (Shen, Yao, Gholami, Mahoney, Keutzer, "PowerNorm: Rethinking Batch Normalization in Transformers",
ICML 2020), reimplemented from the paper's algorithm, for token features ``(N, C)`` or ``(T, B, C)``.

Per feature ``c``, over the ``B`` NON-padded tokens ``x_i`` of the training step ``t``::

    psi_B^2 = (1/B) sum_i x_i^2                                (quadratic mean, no mean subtraction)
    x_hat   = x / psi_{t-1},   psi_{t-1} = sqrt(phi_{t-1} + eps)   (the RUNNING statistic)
    y       = gamma x_hat + beta
    phi_t   = alpha_fwd phi_{t-1} + (1 - alpha_fwd) psi_B^2     (buffer ``running_phi``, initialised to 1)

Approximate backward (the custom autograd Function :class:`PowerNormFunction`)::

    dL/dx_hat   = gamma dL/dy
    dL/dx_tilde = dL/dx_hat - nu_{t-1} x_hat
    dL/dx       = dL/dx_tilde / psi_{t-1}
    nu_t        = nu_{t-1} (1 - (1 - alpha_bkw) Gamma) + (1 - alpha_bkw) Lambda      (buffer ``running_nu``, init 0)
    Gamma = mean_i x_hat_i^2,   Lambda = mean_i x_hat_i dL/dx_hat_i               (means over non-padded tokens)

Inference: ``y = gamma x / sqrt(phi_T + eps) + beta``, a fixed per-feature affine map (bounded exactly).

Conventions and differences from the authors' public code (a GPL fork, not used here):

* ``nu`` is stored directly; the public code stores ``ema_gz`` with ``nu = (1 - alpha_bkw) ema_gz`` (the same
  recursion).
* The backward divides by the running ``psi_{t-1}`` as in the paper; the public code divides by the current
  batch ``sqrt(psi_B^2 + eps)``.
* Warm-up (the first ``warmup_iters`` training steps): normalise by the batch statistic ``sqrt(psi_B^2 + eps)``
  with the exact gradient (batch normalization without mean subtraction); ``phi`` is the cumulative average of
  ``psi_B^2`` over the warm-up steps; ``nu`` is not updated. The public code additionally applies the EMA to
  ``phi`` in the same step; not done here. The authors' translation scripts use 8000 warm-up updates; the default
  here is 0 (none), pass a value for long training runs.
* ``scaling_groups=G``: GroupScaling before PowerNorm (the paper's appendix): per token,
  ``x / sqrt(mean over each group of C/G consecutive features of x^2 + eps)``, an RMS normalisation per group.
* ``mask``: boolean, shape ``x.shape[:-1]``, ``True`` = padded token. Padded tokens change no statistic
  (``phi``, ``nu``, ``psi_B``); their outputs use the same normaliser as the other tokens.
* One forward, then one backward, per step (the backward updates ``nu``; the ``nu_{t-1}`` used is the value at
  the forward call).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from lipbound.errors import InvalidInputError, ShapeMismatchError


class PowerNormFunction(torch.autograd.Function):
    """``x_hat = x / sqrt(phi + eps)`` with the running-statistics backward of the module docstring.

    ``forward(x, valid, phi, nu, alpha_fwd, alpha_bkw, eps)``: ``x`` ``(M, C)``, ``valid`` ``(M, 1)`` 0/1 weights of
    the non-padded rows; ``phi`` and ``nu`` ``(C,)`` buffers updated in place (``phi`` here, ``nu`` in backward).
    """

    @staticmethod
    def forward(ctx, x, valid, phi, nu, alpha_fwd, alpha_bkw, eps):  # type: ignore[override]
        count = valid.sum()
        s = torch.sqrt(phi + eps)
        x_hat = x / s
        psi_b2 = (valid * x * x).sum(dim=0) / count
        ctx.save_for_backward(x_hat, s, nu.clone(), valid, count)
        ctx.nu, ctx.alpha_bkw = nu, alpha_bkw
        phi.mul_(alpha_fwd).add_(psi_b2, alpha=1 - alpha_fwd)
        return x_hat

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_xhat):  # type: ignore[override]
        x_hat, s, nu_prev, valid, count = ctx.saved_tensors
        a = ctx.alpha_bkw
        grad_x = (grad_xhat - nu_prev * x_hat) / s
        gamma_ = (valid * x_hat * x_hat).sum(dim=0) / count
        lambda_ = (valid * x_hat * grad_xhat).sum(dim=0) / count
        ctx.nu.copy_(nu_prev * (1 - (1 - a) * gamma_) + (1 - a) * lambda_)
        return grad_x, None, None, None, None, None, None


def group_scaling(x: Tensor, groups: int, eps: float) -> Tensor:
    """Per token, ``x / sqrt(mean_{group}(x^2) + eps)`` over ``groups`` groups of consecutive features."""
    c = x.shape[-1]
    xg = x.reshape(*x.shape[:-1], groups, c // groups)
    ms = xg.pow(2).mean(dim=-1, keepdim=True)
    if eps == 0 and bool((ms == 0).any()):
        raise InvalidInputError("GroupScaling with eps=0: a token group is all zero (division by zero); use eps > 0")
    return (xg / torch.sqrt(ms + eps)).reshape(x.shape)


class PowerNorm(nn.Module):
    """PowerNorm over the last dimension of ``(N, C)`` or ``(T, B, C)`` inputs (see the module docstring).

    Args:
        num_features: ``C``.
        alpha_fwd, alpha_bkw: the forward and backward running-average rates in ``[0, 1)``.
        eps: ``>= 0``, inside the square roots.
        warmup_iters: training steps normalised by the batch statistic.
        scaling_groups: ``G`` for GroupScaling before the normalisation (must divide ``C``), or None.
    """

    def __init__(
        self,
        num_features: int,
        alpha_fwd: float = 0.9,
        alpha_bkw: float = 0.9,
        eps: float = 1e-5,
        warmup_iters: int = 0,
        scaling_groups: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, a in (("alpha_fwd", alpha_fwd), ("alpha_bkw", alpha_bkw)):
            if not 0 <= a < 1:
                raise InvalidInputError(f"PowerNorm: {name} must be in [0, 1), got {a}")
        if not eps >= 0:
            raise InvalidInputError(f"PowerNorm: eps must be >= 0, got {eps}")
        if warmup_iters < 0:
            raise InvalidInputError(f"PowerNorm: warmup_iters must be >= 0, got {warmup_iters}")
        if scaling_groups is not None and (scaling_groups < 1 or num_features % scaling_groups):
            raise InvalidInputError(
                f"PowerNorm: scaling_groups={scaling_groups} must be >= 1 and divide num_features={num_features}"
            )
        kw = {"device": device, "dtype": dtype}
        self.num_features = int(num_features)
        self.alpha_fwd, self.alpha_bkw, self.eps = float(alpha_fwd), float(alpha_bkw), float(eps)
        self.warmup_iters, self.scaling_groups = int(warmup_iters), scaling_groups
        self.weight = nn.Parameter(torch.ones(num_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        self.register_buffer("running_phi", torch.ones(num_features, **kw))
        self.register_buffer("running_nu", torch.zeros(num_features, **kw))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def inference_scale(self) -> Tensor:
        """``gamma / sqrt(phi + eps)``: eval mode is ``y = scale * x + beta`` (after GroupScaling, if any)."""
        return self.weight / torch.sqrt(self.running_phi + self.eps)

    def _valid(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return torch.ones(x.shape[:-1].numel(), 1, dtype=x.dtype, device=x.device)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise InvalidInputError(f"PowerNorm: mask must be a bool tensor (True = padded), got {type(mask)}")
        if tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ShapeMismatchError(
                f"PowerNorm: mask shape {tuple(mask.shape)} must equal the input shape without the feature "
                f"dimension, {tuple(x.shape[:-1])} (for (T, B, C) inputs a (B, T) padding mask must be transposed)"
            )
        return (~mask).reshape(-1, 1).to(x.dtype)

    def _check_positive(self, stat: Tensor, what: str) -> None:
        if self.eps == 0 and bool((stat == 0).any()):
            raise InvalidInputError(f"PowerNorm with eps=0: {what} is zero for some feature (division by zero)")

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() not in (2, 3) or x.shape[-1] != self.num_features:
            raise ShapeMismatchError(
                f"PowerNorm({self.num_features}) expects (N, {self.num_features}) or (T, B, {self.num_features}), "
                f"got {tuple(x.shape)}"
            )
        valid = self._valid(x, mask)
        if self.scaling_groups is not None:
            x = group_scaling(x, self.scaling_groups, self.eps)
        x2 = x.reshape(-1, self.num_features)
        if not self.training:
            self._check_positive(self.running_phi, "the running statistic phi")
            x_hat = x2 / torch.sqrt(self.running_phi + self.eps)
        else:
            if not bool(valid.any()):
                raise InvalidInputError("PowerNorm: every token of the batch is padded (no statistic)")
            step = int(self.num_batches_tracked)
            if step < self.warmup_iters:
                psi_b2 = (valid * x2 * x2).sum(dim=0) / valid.sum()
                self._check_positive(psi_b2, "the batch quadratic mean psi_B^2")
                x_hat = x2 / torch.sqrt(psi_b2 + self.eps)
                with torch.no_grad():
                    self.running_phi.add_((psi_b2.detach() - self.running_phi) / (step + 1))
            else:
                self._check_positive(self.running_phi, "the running statistic phi")
                x_hat = PowerNormFunction.apply(
                    x2, valid, self.running_phi, self.running_nu, self.alpha_fwd, self.alpha_bkw, self.eps
                )
            self.num_batches_tracked.add_(1)
        return (self.weight * x_hat + self.bias).reshape(x.shape)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, eps={self.eps}, "
            f"warmup_iters={self.warmup_iters}, scaling_groups={self.scaling_groups}"
        )
