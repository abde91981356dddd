"""Ops that are the identity at inference: ``nn.Identity``, ``nn.Dropout`` (eval) and ``F.dropout(training=False)``.

They add no node to the graph.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from lipbound.errors import InvalidModelError
from lipbound.ops.registry import REGISTRY


@REGISTRY.module(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, name="Identity / Dropout (eval)")
def _from_module(builder, m, args, kwargs):
    if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
        raise InvalidModelError(f"Dropout at {builder.origin!r} is in training mode; call model.eval()")
    return args[0]


@REGISTRY.function(F.dropout, name="Identity / Dropout (eval)")
def _from_function(builder, module, args, kwargs):
    training = args[2] if len(args) > 2 else kwargs.get("training", True)
    if training:
        raise InvalidModelError(f"F.dropout at {builder.origin!r} is called with training=True")
    return args[0]


@REGISTRY.method("contiguous", name="Identity / Dropout (eval)")
def _contiguous(builder, module, args, kwargs):
    return args[0]
