"""The one check of a number that every layer uses, in a module that imports nothing heavy (the
trace replay and the tier specs use it without loading numpy)."""

from __future__ import annotations

import math

__all__ = ["MIN_ARRIVAL_RATE", "check_positive"]

# Conversations per second below which the models and the trace replay refuse (one every 30 years):
# the models' characteristic time grows as capacity / rate and a replay's gaps as 1 / rate; at
# 1e-308 both overflow.
MIN_ARRIVAL_RATE = 1e-9


def check_positive(name: str, value, *, integer: bool = False, allow_zero: bool = False,
                   at_most: float | None = None) -> None:
    """A finite number > 0 (>= 0 with ``allow_zero``), whole if ``integer``, at most ``at_most``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if ok and integer:
        ok = int(value) == value
    what = "a whole number" if integer else "a number"
    if not ok:
        raise ValueError(f"{name} must be {what} {'>= 0' if allow_zero else '> 0'} (got {value!r})")
    if at_most is not None and value > at_most:
        raise ValueError(f"{name} must be {what} <= {at_most:,g} (got {value!r})")
