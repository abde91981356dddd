"""Weight Standardization (Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization"): each output filter of a convolution / each row of a linear layer is standardized before use.

With the weight viewed as ``W in R^{O x I}`` (``I = C_in/groups * k_h * k_w`` for a convolution)::

    mu_i    = (1/I) sum_j W_ij
    v_i     = (1/I) sum_j (W_ij - mu_i)^2              (biased variance; ``unbiased=True``: divide by I - 1)
    sigma_i = sqrt(v_i + eps)                           (``eps_inside=False``: sqrt(v_i) + eps)
    W_hat_ij = (W_ij - mu_i) / sigma_i,                 y = W_hat * x + b

Defaults follow the paper's formula (biased variance, ``eps`` inside the square root). Other implementations
differ, and the two flags reproduce each of them exactly:

* the authors' PyTorch README layers: unbiased std, ``+ 1e-5`` outside the root -> ``unbiased=True,
  eps_inside=False``;
* the authors' BCN ImageNet layers: unbiased variance, ``sqrt(var + 1e-5)`` -> ``unbiased=True``;
* timm ``StdConv2d``: biased variance, ``eps=1e-6`` inside (``eps=1e-6``);
* the authors' TF README: biased std, ``+ 1e-5`` outside -> ``eps_inside=False``.

``eps`` outside the root has an unbounded derivative at ``v_i = 0`` (reported NaN gradients); inside, the
gradient is, row-wise with ``g = dL/dW_hat``::

    dL/dW = (1/sigma) (g - mean_j(g) 1 - (1/I) <W_hat, g> W_hat)

(zero row mean, and orthogonal to ``W_hat`` when ``eps = 0``).

Certified bounds: the layer computes the convolution with ``W_hat``, so the bound engine sees
:meth:`standardized_weight`, never ``W``. ``||W_hat_i||^2 = I v_i / (v_i + eps) ~ I``: a WS layer alone has a
large operator norm independent of the scale of ``W``; it is meant to be followed by an activation normalization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, InvalidModelError


def standardize_weight(weight: Tensor, eps: float = 1e-5, unbiased: bool = False, eps_inside: bool = True) -> Tensor:
    """``W_hat`` of the module docstring, per output row (dimension 0), reduced over all other dimensions.

    Raises :class:`~lipbound.errors.InvalidModelError` if ``eps == 0`` and a row has zero variance (``W_hat``
    undefined there).
    """
    o = weight.shape[0]
    w = weight.reshape(o, -1)
    n = w.shape[1]
    if unbiased and n < 2:
        raise InvalidInputError(f"unbiased weight variance needs at least 2 entries per filter, got {n}")
    centred = w - w.mean(dim=1, keepdim=True)
    var = centred.pow(2).sum(dim=1, keepdim=True) / (n - 1 if unbiased else n)
    if eps == 0 and bool((var == 0).any()):
        rows = torch.nonzero(var.reshape(-1) == 0).reshape(-1)[:5].tolist()
        raise InvalidModelError(
            f"weight standardization with eps=0: filter(s) {rows} have zero variance (W_hat undefined); use eps > 0"
        )
    sigma = torch.sqrt(var + eps) if eps_inside else torch.sqrt(var) + eps
    return (centred / sigma).reshape(weight.shape)


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not eps >= 0:
        raise InvalidInputError(f"eps must be >= 0, got {eps}")
    return eps


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward uses the standardized weight ``W_hat`` (see the module docstring).

    Arguments are those of ``nn.Conv2d`` plus ``eps`` (default 1e-5), ``unbiased`` (default False: the biased
    variance of the paper) and ``eps_inside`` (default True: ``sqrt(v + eps)``). The raw ``weight`` parameter is
    what the optimizer updates; :meth:`standardized_weight` is what the layer (and the bound engine) applies.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        eps: float = 1e-5,
        unbiased: bool = False,
        eps_inside: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self.eps = _check_eps(eps)
        self.unbiased = bool(unbiased)
        self.eps_inside = bool(eps_inside)

    def standardized_weight(self) -> Tensor:
        """``W_hat`` (same shape as ``weight``), differentiable w.r.t. ``weight``."""
        return standardize_weight(self.weight, self.eps, self.unbiased, self.eps_inside)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}, unbiased={self.unbiased}, eps_inside={self.eps_inside}"


class WSLinear(nn.Linear):
    """``nn.Linear`` with standardized rows: ``y = W_hat x + b`` (see the module docstring; ``I = in_features``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        eps: float = 1e-5,
        unbiased: bool = False,
        eps_inside: bool = True,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.eps = _check_eps(eps)
        self.unbiased = bool(unbiased)
        self.eps_inside = bool(eps_inside)

    def standardized_weight(self) -> Tensor:
        """``W_hat`` (``out_features x in_features``), differentiable w.r.t. ``weight``."""
        return standardize_weight(self.weight, self.eps, self.unbiased, self.eps_inside)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}, unbiased={self.unbiased}, eps_inside={self.eps_inside}"
