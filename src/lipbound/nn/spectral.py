"""Certified spectral normalisation of ``nn.Linear`` and ``nn.Conv2d`` layers.

``torch.nn.utils.spectral_norm`` divides a weight by a power-iteration ESTIMATE of the spectral norm of the weight
reshaped to ``(c_out, c_in k1 k2)``. For a convolution that matrix is not the layer's operator (on a 16-channel
3x3 conv the operator norm is typically ~1.5-2x larger), and the estimate approaches sigma from below, so the
result is not guaranteed to be <= 1. Here:

* :func:`certified_spectral_norm` rescales the weight in place by ``min(1, max_norm / sigma_hat)`` where
  ``sigma_hat`` is a CERTIFIED upper bound of the layer's l2 operator norm (Gram iteration; convolutions for the
  given input shape, :mod:`lipbound.linalg`), then re-certifies the stored (possibly float32) weight
  and shrinks again until the certified norm is ``<= max_norm``.
* :class:`CertifiedSpectralNorm` is a ``torch.nn.utils.parametrize`` parametrisation for training: in training mode
  the forward uses a cheap power-iteration estimate ``sigma_est = u^T A v`` (one step per call, persistent
  ``u``/``v``, differentiable in the weight like torch's), ``W -> W min(1, max_norm / sigma_est)``;
  :meth:`CertifiedSpectralNorm.certify` computes the certified bound of the current weight and from then on (until
  the weight changes or training resumes) the forward rescales by it, so the layer is certified ``<= max_norm``.
  Use :func:`spectral_parametrize` to register it.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lipbound.errors import InvalidInputError, UnsupportedOperatorError
from lipbound.linalg import conv_operator_norm_upper, conv_spec, matrix_norm_upper


def layer_operator_norm_upper(module: nn.Module, input_shape: tuple[int, ...] | None = None, weight=None) -> float:
    """Certified l2 operator norm of an ``nn.Linear`` or ``nn.Conv2d`` (``input_shape`` ``(C, H, W)`` or ``(H, W)``
    required for convolutions). ``weight`` overrides the module's weight (used by the parametrisation)."""
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise UnsupportedOperatorError(type(module).__name__, "certified_spectral_norm", ["Linear", "Conv2d"])
    w = (module.weight if weight is None else weight).detach()
    if isinstance(module, nn.Linear):
        return matrix_norm_upper(w, 2)
    if input_shape is None:
        raise InvalidInputError(f"the operator norm of {module} depends on the input size: pass input_shape=(C, H, W)")
    spec = conv_spec(module, input_shape)
    return conv_operator_norm_upper(
        w, spec.in_shape, spec.stride, spec.padding, spec.dilation, spec.groups, padding_mode=spec.padding_mode
    )


def _scale_factor(sigma: float, max_norm: float) -> float:
    return 1.0 if sigma <= max_norm else max_norm / sigma * (1 - 1e-6)


def certified_spectral_norm(
    module: nn.Module, max_norm: float = 1.0, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """Rescale ``module.weight`` in place so that its CERTIFIED l2 operator norm is ``<= max_norm``; returns it.

    Weights already below ``max_norm`` are left unchanged. The bias does not affect the Lipschitz constant.
    """
    if max_norm <= 0:
        raise InvalidInputError(f"max_norm must be positive, got {max_norm}")
    with torch.no_grad():
        for _ in range(5):
            sigma = layer_operator_norm_upper(module, input_shape)
            if sigma <= max_norm:
                module.certified_norm = sigma
                return module
            module.weight.mul_(_scale_factor(sigma, max_norm))
    raise InvalidInputError(f"could not certify {module} below max_norm={max_norm} (sigma_hat={sigma})")


class CertifiedSpectralNorm(nn.Module):
    """Parametrisation ``W -> W min(1, max_norm / sigma)`` (see module docstring)."""

    def __init__(
        self,
        module: nn.Module,
        max_norm: float = 1.0,
        input_shape: tuple[int, ...] | None = None,
        n_power_iterations: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise UnsupportedOperatorError(type(module).__name__, "CertifiedSpectralNorm", ["Linear", "Conv2d"])
        if isinstance(module, nn.Conv2d):
            if input_shape is None:
                raise InvalidInputError(f"CertifiedSpectralNorm on {module} needs input_shape=(C, H, W)")
            spec = conv_spec(module, input_shape)
            self._in_shape = spec.in_shape
            self._conv = (spec.stride, spec.padding, spec.dilation, spec.groups, spec.padding_mode)
        else:
            self._in_shape = (module.weight.shape[1],)
            self._conv = None
        self.max_norm = float(max_norm)
        self.input_shape = input_shape
        self.n_power_iterations = int(n_power_iterations)
        self._owner = weakref.ref(module)
        w = module.weight.detach()
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(1, *self._in_shape, generator=gen, dtype=w.dtype).to(w.device)
        self.register_buffer("_v", v / v.norm())
        self.register_buffer("_certified_scale", torch.ones((), dtype=w.dtype, device=w.device))
        self._certified_version: int | None = None
        self.certified_norm: float | None = None

    def _apply_op(self, w: Tensor, x: Tensor) -> Tensor:
        if self._conv is None:
            return x @ w.T
        stride, padding, dilation, groups, mode = self._conv
        if mode == "circular":
            x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), mode="circular")
            padding = 0
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    def estimate(self, w: Tensor) -> Tensor:
        """Power-iteration estimate ``||A v||`` (a lower estimate of the norm), differentiable in ``w``."""
        with torch.no_grad():
            wd = w.detach()
            v = self._v
            for _ in range(self.n_power_iterations if self.training else 0):
                x = v.clone().requires_grad_(True)
                with torch.enable_grad():
                    y = self._apply_op(wd, x)
                    (g,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
                n = g.norm()
                if n > 0:
                    v = g / n
            self._v.copy_(v)
        return self._apply_op(w, self._v).norm()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_owner"] = None  # weak references do not pickle/deepcopy; pass the weight to certify() instead
        return state

    def _norm_upper(self, w: Tensor) -> float:
        if self._conv is None:
            return matrix_norm_upper(w, 2)
        stride, padding, dilation, groups, mode = self._conv
        return conv_operator_norm_upper(w, self._in_shape, stride, padding, dilation, groups, padding_mode=mode)

    def forward(self, w: Tensor) -> Tensor:
        if not self.training and self._certified_version is not None and self._certified_version == w._version:
            return w * self._certified_scale
        self._certified_version = None
        sigma = self.estimate(w)
        return w * torch.clamp(self.max_norm / sigma.clamp_min(1e-30), max=1.0)

    @torch.no_grad()
    def certify(self, original: Tensor | None = None) -> float:
        """Certify the current weight (``original``, by default the registered module's unconstrained weight):
        compute a certified ``sigma_hat``, use ``min(1, max_norm / sigma_hat)`` (checked again on the rescaled
        weight) in eval-mode forwards until the weight changes. Returns the certified norm of the effective weight."""
        if original is None:
            owner = self._owner() if self._owner is not None else None
            if owner is None:
                raise InvalidInputError("the parametrised module is unknown here: pass certify(original=weight)")
            original = owner.parametrizations.weight.original
        orig = original.detach()
        scale = _scale_factor(self._norm_upper(orig), self.max_norm)
        for _ in range(5):
            got = self._norm_upper(orig * torch.as_tensor(scale, dtype=orig.dtype))
            if got <= self.max_norm:
                self._certified_scale.fill_(scale)
                self._certified_version = original._version
                self.certified_norm = got
                return got
            scale *= self.max_norm / got * (1 - 1e-6)
        raise InvalidInputError(f"could not certify the weight below max_norm={self.max_norm}")


def certify_parametrized(module: nn.Module) -> float:
    """Call :meth:`CertifiedSpectralNorm.certify` for ``module``'s weight parametrisation; returns the norm."""
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    if plist is None or not isinstance(plist[0], CertifiedSpectralNorm):
        raise InvalidInputError(f"{module} has no CertifiedSpectralNorm parametrisation on its weight")
    return plist[0].certify(plist.original)


def spectral_parametrize(
    module: nn.Module, max_norm: float = 1.0, input_shape: tuple[int, ...] | None = None, n_power_iterations: int = 1
) -> CertifiedSpectralNorm:
    """Register :class:`CertifiedSpectralNorm` on ``module.weight``; returns the parametrisation object
    (call ``.certify()`` on it, e.g. after training, with the module in eval mode)."""
    param = CertifiedSpectralNorm(module, max_norm, input_shape, n_power_iterations)
    parametrize.register_parametrization(module, "weight", param)
    return module.parametrizations.weight[0]
