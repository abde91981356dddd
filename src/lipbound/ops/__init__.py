"""Operators: base classes, the registry and one module per op. ``lipbound.ops.catalog`` registers them all."""
