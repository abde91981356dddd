"""The package's import layers, bottom-up: a module may import modules of its own layer or of layers below it.

``tests/test_layers.py`` enforces this table on every import statement in the package (module level and inside
functions), and forbids import cycles between modules even within one layer. A module's layer is that of the
longest entry that is a prefix of its dotted name (``lipbound.graph.ir`` is ``ir``, ``lipbound.graph.trace`` is
``frontends``); ``lipbound`` itself (the root ``__init__``, the public facade) matches only exactly.

::

    errors        lipbound.errors
    linalg        lipbound.linalg: certified operator norms (matrices, convolutions), shared by nn/ and global bounds;
                  lipbound.highs: the HiGHS solver factory
    nn            lipbound.nn: Lipschitz-aware torch layers (MaxMin, GroupSort, Householder, spectral, ...)
    ir            lipbound.graph.ir (Graph, Node), lipbound.ops.base (Op classes), lipbound.ops.registry
    ops           lipbound.ops.*: one module per operator (math and bound rules only), ops.catalog registers them
    frontends     lipbound.graph.* (torch.fx trace, TorchScript, ONNX, load), lipbound.problem, lipbound.models
    engine        lipbound.engine: CROWN back-substitution, forward bounds, the Jacobian graph
    analyses      local, lower, bab (+ farkas), exact, monotonicity, local_sdp, global_bounds
    bounded       lipbound.bounded: Bounded(model, input_shape), trace once and bound many times
    applications  smoothing, counterfactuals, rl, runner, demo: they use the public core only
    facade        lipbound (the root __init__: the public names, including lipbound.run from the runner)
    cli           lipbound.cli: one module per command, mounting the applications' commands

Compatibility aliases (a former module path that now only re-exports a module of a higher layer) are listed in
:data:`COMPAT_ALIASES`; they are exempt from the layer rule but no module of the package may import them.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("errors", ("lipbound.errors", "lipbound._layers")),
    ("linalg", ("lipbound.linalg", "lipbound.highs")),
    ("nn", ("lipbound.nn",)),
    ("ir", ("lipbound.graph.ir", "lipbound.ops.base", "lipbound.ops.registry")),
    ("ops", ("lipbound.ops",)),
    ("frontends", ("lipbound.graph", "lipbound.problem", "lipbound.models", "lipbound.data")),
    ("engine", ("lipbound.engine",)),
    (
        "analyses",
        (
            "lipbound.local",
            "lipbound.lower",
            "lipbound.bab",
            "lipbound.farkas",
            "lipbound.exact",
            "lipbound.monotonicity",
            "lipbound.local_sdp",
            "lipbound.global_bounds",
        ),
    ),
    ("bounded", ("lipbound.bounded",)),
    (
        "applications",
        ("lipbound.smoothing", "lipbound.counterfactuals", "lipbound.rl", "lipbound.runner", "lipbound.demo"),
    ),
    ("facade", ("lipbound",)),
    ("cli", ("lipbound.cli",)),
)

#: former module paths kept importable; each re-exports a module of a higher layer and nothing imports it
COMPAT_ALIASES: dict[str, str] = {
    "lipbound.global_bounds.cli": "lipbound.cli.global_",
    "lipbound.smoothing.cli": "lipbound.cli.smooth",
}

#: package ``__init__`` modules whose body imports a submodule above the package's lowest layer (Python runs a
#: package's ``__init__`` before any of its submodules, so this is allowed only with a reason)
EAGER_PACKAGE_INITS: dict[str, str] = {
    "lipbound": "the public facade: Python runs it first whatever is imported, and it imports no application",
    "lipbound.graph": "``lipbound.graph.trace`` names both the tracer module and the function; a lazy re-export would "
    "be replaced by the module object as soon as the submodule is imported elsewhere",
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name (``None`` if no entry covers it)."""
    best, best_len = None, -1
    for name, prefixes in LAYERS:
        for p in prefixes:
            exact_only = p == "lipbound"
            if (module == p or (not exact_only and module.startswith(p + "."))) and len(p) > best_len:
                best, best_len = name, len(p)
    return best


def rank(layer: str) -> int:
    """Position of ``layer`` in :data:`LAYERS` (0 = bottom)."""
    return [name for name, _ in LAYERS].index(layer)
