"""Bundled base models for the counterfactual data sets (trained by ``scripts/train_counterfactuals.py``).

* ``cf-german-mlp``: SimpleMLP 61-128-128-2 on the encoded German credit training split.
* ``cf-breast-cancer-mlp``: SimpleMLP 30-128-128-2 on the min-max scaled breast cancer training split.

Logit 1 is the favourable class. Registered with :func:`lipbound.models.register_bundled` on first use
(:func:`register_base_models`, called by :func:`load_base_model` and the CLI), not on import: importing the CLI
must not change the core registry's list of names.
"""

from __future__ import annotations

from functools import partial

from lipbound.models import BundledSpec, SimpleMLP, load_bundled, register_bundled

PACKAGE = "lipbound.counterfactuals.data"
WIDTH = 128
#: data set name -> (bundled model name, input dimension)
BASE_MODELS = {"german": ("cf-german-mlp", 61), "breast_cancer": ("cf-breast-cancer-mlp", 30)}


def _specs() -> list[BundledSpec]:
    return [
        BundledSpec(
            name,
            partial(SimpleMLP, d, WIDTH, 2),
            (d,),
            f"{name.replace('-', '_')}.pt",
            f"{data}_test.npz",
            package=PACKAGE,
        )
        for data, (name, d) in BASE_MODELS.items()
    ]


SPECS = _specs()


def register_base_models() -> None:
    """Make ``cf-german-mlp`` and ``cf-breast-cancer-mlp`` loadable with :func:`lipbound.models.load_bundled`."""
    for spec in SPECS:
        register_bundled(spec)  # idempotent: the same spec object every time


def load_base_model(data: str):
    """The bundled base MLP for data set ``data`` ("german" or "breast_cancer"), float32, eval mode."""
    register_base_models()
    return load_bundled(BASE_MODELS[data][0])
