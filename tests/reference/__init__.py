"""Independent references for the tests: exact local Lipschitz values of tiny ReLU nets, sampled lower bounds,
global product bounds (:mod:`tests.reference.exact`) and random architectures (:mod:`tests.reference.nets`).

Nothing here imports lipbound's bound engine; the references use only torch, numpy and scipy (HiGHS).
"""
