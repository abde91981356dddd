"""Bundled base models for the counterfactual data sets (trained by ``scripts/train_counterfactuals.py``).

* ``cf-german-mlp``: SimpleMLP 61-128-128-2 on the encoded German credit training split.
* ``cf-breast-cancer-mlp``: SimpleMLP 30-128-128-2 on the min-max scaled breast cancer training split.

Logit 1 is the favourable class. Registered with :func:`lipbound.models.register_bundled` on import, so
``load_bundled(name)`` and the CLI's ``bundled:<name>`` find them.
"""

from __future__ import annotations

from lipbound.models import BundledSpec, SimpleMLP, load_bundled, register_bundled

PACKAGE = "lipbound.counterfactuals.data"
WIDTH = 128
#: data set name -> (bundled model name, input dimension)
BASE_MODELS = {"german": ("cf-german-mlp", 61), "breast_cancer": ("cf-breast-cancer-mlp", 30)}


def _register() -> None:
    for data, (name, d) in BASE_MODELS.items():
        register_bundled(
            BundledSpec(
                name,
                lambda d=d: SimpleMLP(d, WIDTH, 2),
                (d,),
                f"{name.replace('-', '_')}.pt",
                f"{data}_test.npz",
                package=PACKAGE,
            )
        )


def load_base_model(data: str):
    """The bundled base MLP for data set ``data`` ("german" or "breast_cancer"), float32, eval mode."""
    return load_bundled(BASE_MODELS[data][0])


_register()
