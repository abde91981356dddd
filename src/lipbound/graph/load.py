"""Load models and inputs named on the command line.

``load_model(spec)`` accepts

* ``path/model.onnx`` -> a :class:`~lipbound.graph.ir.Graph` (input shape read from the ONNX input),
* ``path/model.pt`` / ``.pth`` holding a TorchScript archive -> ``torch.jit.ScriptModule`` in eval mode,
* ``package.module:factory`` -> ``factory()`` (an ``nn.Module``), with ``weights`` a ``state_dict`` file loaded
  with ``torch.load(..., weights_only=True)``, in eval mode.

Every failure is a :class:`~lipbound.errors.ModelLoadError` whose message says what was wrong.
"""

from __future__ import annotations

import importlib
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, ModelLoadError
from lipbound.graph.ir import Graph

_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")
_TORCH_EXT = (".pt", ".pth", ".jit", ".ptl", ".torchscript")


def load_model(
    spec: str, weights: str | None = None, input_shape: tuple[int, ...] | None = None
) -> tuple[nn.Module | Graph, tuple[int, ...] | None]:
    """Load ``spec`` and return ``(model, per-sample input shape or None if unknown)``."""
    spec = str(spec)
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        if weights is not None:
            raise ModelLoadError("--weights cannot be combined with an ONNX model (its weights are in the file)")
        return _load_onnx(path, shape)
    if path.suffix.lower() in _TORCH_EXT:
        if weights is not None:
            raise ModelLoadError("--weights cannot be combined with a TorchScript archive (its weights are inside)")
        return _load_torchscript(path, shape)
    m = _FACTORY.match(spec)
    if m and not path.exists():
        return _load_factory(m["module"], m["attr"], weights, shape)
    if path.is_file():  # unknown extension: sniff the content
        if zipfile.is_zipfile(path):
            return _load_torchscript(path, shape)
        return _load_onnx(path, shape)
    raise ModelLoadError(
        f"cannot load model {spec!r}: no such file, and not a 'package.module:factory' spec "
        "(expected a .onnx file, a TorchScript .pt/.pth archive, or package.module:factory)"
    )


def _load_onnx(path: Path, shape: tuple[int, ...] | None) -> tuple[Graph, tuple[int, ...]]:
    from lipbound.graph.onnx_import import graph_from_onnx

    if not path.is_file():
        raise ModelLoadError(f"ONNX file not found: {str(path)!r}")
    graph = graph_from_onnx(path, shape)
    return graph, graph.input_shape


def _load_torchscript(path: Path, shape: tuple[int, ...] | None) -> tuple[nn.Module, tuple[int, ...] | None]:
    from lipbound.graph.torchscript import input_shape_of

    if not path.is_file():
        raise ModelLoadError(f"TorchScript file not found: {str(path)!r}")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{str(path)!r} is not a TorchScript archive (not a zip file; corrupt or wrong format)")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if not any("/code/" in n or n.endswith("constants.pkl") for n in names):
        raise ModelLoadError(
            f"{str(path)!r} is a torch.save() checkpoint, not a TorchScript archive: save the model with "
            "torch.jit.trace(model, x).save(path), or use 'package.module:factory' with --weights"
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ModelLoadError(f"could not load TorchScript archive {str(path)!r}: {e}") from e
    return module, shape if shape is not None else input_shape_of(module)  # eval mode: lipbound.graph.mode


def _load_factory(
    module_name: str, attr: str, weights: str | None, shape: tuple[int, ...] | None
) -> tuple[nn.Module, tuple[int, ...] | None]:
    spec = f"{module_name}:{attr}"
    try:
        mod = importlib.import_module(module_name)
    except Exception as e:
        raise ModelLoadError(f"cannot import module {module_name!r} of model spec {spec!r}: {e}") from e
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n)))[:20]
            raise ModelLoadError(f"factory {attr!r} not found in module {module_name!r}; callables there: {public}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        model = obj
    elif callable(obj):
        try:
            model = obj()
        except Exception as e:
            raise ModelLoadError(f"calling factory {spec!r}() failed: {type(e).__name__}: {e}") from e
    else:
        raise ModelLoadError(f"{spec!r} is a {type(obj).__name__}, not a callable returning an nn.Module")
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"factory {spec!r}() returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, weights, spec)
    if shape is None:
        declared = getattr(model, "input_shape", None)
        shape = tuple(int(s) for s in declared) if declared is not None else None
    return model, shape


def _load_weights(model: nn.Module, weights: str, spec: str) -> None:
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {weights!r}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"could not read weights {weights!r} with torch.load(weights_only=True): {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelLoadError(f"weights {weights!r} do not hold a state_dict (a dict of tensors)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:8]}")
        raise ModelLoadError(f"weights {weights!r} do not fit model {spec!r}: " + "; ".join(parts))
    model.load_state_dict(state)


def load_inputs(path: str) -> Tensor:
    """Read a batch of inputs from ``.npy``, ``.npz`` (one array, or key ``x0``/``x``/``inputs``) or ``.pt``."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"input file not found: {str(path)!r}")
    ext = p.suffix.lower()
    try:
        if ext == ".npy":
            data: Any = np.load(p, allow_pickle=False)
        elif ext == ".npz":
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                key = next((k for k in ("x0", "x", "inputs") if k in keys), keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ModelLoadError(f"{str(path)!r} holds arrays {keys}; name the inputs 'x0', 'x' or 'inputs'")
                data = z[key]
        elif ext in (".pt", ".pth"):
            data = torch.load(str(p), map_location="cpu", weights_only=True)
            if isinstance(data, dict):
                tensors = {k: v for k, v in data.items() if isinstance(v, Tensor)}
                key = next((k for k in ("x0", "x", "inputs") if k in tensors), None)
                if key is None and len(tensors) == 1:
                    key = next(iter(tensors))
                if key is None:
                    raise ModelLoadError(f"{str(path)!r} holds {sorted(data)}; name the inputs 'x0', 'x' or 'inputs'")
                data = tensors[key]
        else:
            raise ModelLoadError(f"unsupported input file type {ext!r} for {str(path)!r} (use .npy, .npz or .pt)")
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"could not read inputs from {str(path)!r}: {type(e).__name__}: {e}") from e
    x = torch.as_tensor(np.asarray(data) if not isinstance(data, Tensor) else data)
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.uint8, torch.int16, torch.int8)):
        raise InvalidInputError(f"inputs in {str(path)!r} have dtype {x.dtype}, expected numbers")
    if x.dim() == 0:
        raise InvalidInputError(f"inputs in {str(path)!r} are a scalar; expected a batch (B, *input_shape)")
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())
