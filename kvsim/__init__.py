"""kvsim: a discrete-event simulator of LLM prefix (KV) caches, beside the ``analytic`` models.

    >>> from kvsim import Workload, simulate
    >>> result = simulate(Workload(arrival_rate=1.0), capacity_blocks=6250, policy="lru")
    >>> result.token_hit_rate.mean, result.token_hit_rate.ci95
"""

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.service import ServiceModel
from analytic.specs import Workload
from kvsim.cache import PrefixCache, ReferenceCache, ServeResult
from kvsim.engine import Estimate, SimulationResult, simulate
from kvsim.fleet import FleetResult, simulate_fleet

__all__ = [
    "Estimate", "FleetResult", "PrefixCache", "ReferenceCache", "ServeResult", "ServiceModel", "SimulationResult",
    "ThinkTime", "TokenCount", "TurnCount", "Workload", "simulate", "simulate_fleet",
]
