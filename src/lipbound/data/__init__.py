"""Shipped weights and sample inputs of the bundled models (see ``lipbound.models``)."""
