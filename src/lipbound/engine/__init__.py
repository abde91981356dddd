"""The bound engine: CROWN back-substitution, forward bounds and the backward (Jacobian) graph."""
