"""The planner: from a data set's fingerprint and the machine's speed to a recipe, with the reason for every choice.

``seglab.plan(DATA, "10m")`` (the module is callable) is ``seglab.plan.planner.plan``; the parts are
``fingerprint`` (what the data is), ``machine`` (what the machine affords), ``rules`` (the choices, small pure
functions) and ``planner`` (runs them in order and writes the config).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    """``seglab.plan`` is both this package and the public ``plan`` function (``seglab.plan(...)``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from seglab.plan.planner import plan

        return plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
