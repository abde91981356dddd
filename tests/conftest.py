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
    """The lipbound package if the local bound engine is importable, else skip the requesting test."""
    try:
        import lipbound
    except ImportError as e:  # the package is mid-edit
        pytest.skip(f"lipbound does not import: {e}")
    if not hasattr(lipbound, "local_lipschitz") or not hasattr(lipbound, "jacobian_bounds"):
        pytest.skip("lipbound.local_lipschitz / jacobian_bounds are not available yet")
    return lipbound
