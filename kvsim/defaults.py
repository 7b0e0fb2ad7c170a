"""The simulator's defaults that the command line shows in its help and checks, kept apart
from the simulator so that ``kvsim --help`` and ``kvsim calc`` do not import SimPy.
:mod:`kvsim.engine` and :mod:`kvsim.fleet` use them from here."""

__all__ = ["BALANCE_ABS_THRESHOLD", "BALANCE_REL_THRESHOLD", "CACHE_THRESHOLD", "DEFAULT_MAX_EVENTS", "ROUTER_NAMES"]

# Requests one simulation may serve unless told otherwise (``max_events``): about 3-5 minutes on
# one core at this project's 60-130k turns/s; above it a run is refused before it starts, with
# the estimate, so that a typo (a duration of 1e308 s, a rate of 1e9/s) does not run for ever.
DEFAULT_MAX_EVENTS = 20_000_000

# The routers of kvsim.fleet (its ROUTERS maps these names to their classes, in this order).
ROUTER_NAMES = ("random", "round-robin", "affinity", "least-loaded", "cache-aware")

# SGLang router's cache-aware policy defaults (sgl-model-gateway, CacheAwareConfig::default).
CACHE_THRESHOLD = 0.5
BALANCE_ABS_THRESHOLD = 32
BALANCE_REL_THRESHOLD = 1.1
