"""Shared test configuration: importable ``tests.reference`` helpers, hypothesis profiles, engine availability."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

settings.register_profile(
    "lipbound",
    deadline=None,
    max_examples=30,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", parent=settings.get_profile("lipbound"), max_examples=300, derandomize=False)
settings.load_profile(os.environ.get("LIPBOUND_HYPOTHESIS_PROFILE", "lipbound"))

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lip():
    """The lipbound package with its local bound engine. A package that does not import, or lacks
    ``local_lipschitz`` / ``jacobian_bounds``, FAILS the requesting test (a skip would hide a broken build)."""
    try:
        import lipbound
    except ImportError as e:
        pytest.fail(f"lipbound does not import: {e}")
    missing = [n for n in ("local_lipschitz", "jacobian_bounds") if not hasattr(lipbound, n)]
    if missing:
        pytest.fail(f"lipbound lacks {missing}")
    return lipbound
