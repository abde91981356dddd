"""The one place lipbound creates HiGHS solver instances (the MILP of :mod:`lipbound.exact`, the emptiness LPs of
:mod:`lipbound.farkas`).

HiGHS keeps one thread scheduler per process, created by the first instance that runs. An instance created later
with a different ``threads`` option does not solve at all: ``run()`` returns an error and the model status stays
"not set" (seen when the exact MILP, asking for 1 thread, ran after a BaB emptiness LP with the default). Every
instance is therefore made here, with the same options.
"""

from __future__ import annotations

import highspy

#: solver threads of every HiGHS instance in the process (must be the same for all of them)
THREADS = 1


def new_highs(**options: object) -> highspy.Highs:
    """A silent single-threaded ``highspy.Highs`` with the given extra options set."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", THREADS)
    for name, value in options.items():
        h.setOptionValue(name, value)
    return h
