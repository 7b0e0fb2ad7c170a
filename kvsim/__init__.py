"""kvsim: a discrete-event simulator of LLM prefix (KV) caches, beside the ``analytic`` models.

    >>> from kvsim import Workload, simulate
    >>> result = simulate(Workload(arrival_rate=1.0), capacity_blocks=6250, policy="lru")
    >>> result.token_hit_rate.mean, result.token_hit_rate.ci95

The names below are loaded when first used (PEP 562), so that ``kvsim --help`` and
``kvsim calc`` do not pay for the simulator (simpy) they do not run.
"""

from importlib import import_module

_HOMES = {
    "ThinkTime": "analytic.distributions", "TokenCount": "analytic.distributions",
    "TurnCount": "analytic.distributions", "ServiceModel": "analytic.service", "Workload": "analytic.specs",
    "PrefixCache": "kvsim.cache", "ReferenceCache": "kvsim.cache", "ServeResult": "kvsim.cache",
    "Estimate": "kvsim.engine", "SimulationResult": "kvsim.engine", "simulate": "kvsim.engine",
    "FleetResult": "kvsim.fleet", "simulate_fleet": "kvsim.fleet",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kvsim' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
