"""lipbound: certified Lipschitz bounds for PyTorch networks."""

__version__ = "0.1.0"
