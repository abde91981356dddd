"""Import every op module so that its converters are registered in :data:`REGISTRY`."""

from lipbound.ops import (  # noqa: F401  (imported for registration)
    arith,
    avgpool,
    batchnorm,
    conv,
    convex,
    gelu_silu,
    householder,
    identity,
    indexing,
    leaky_relu,
    linear,
    normalization,
    pooling,
    relu,
    shape,
    sigmoid,
    sorting,
    tanh,
    weight_standardization,
)
from lipbound.ops.registry import REGISTRY

__all__ = ["REGISTRY"]
