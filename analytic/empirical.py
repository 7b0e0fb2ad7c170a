"""The LRU characteristic-time model fed from real conversations (templates), block by block.

Conversations start as a Poisson process at rate λ, each replaying a template drawn uniformly
from a set (their blocks are private to the replay). Under the characteristic-time
approximation an LRU cache keeps a block for T after its last access, so with the template's own
times (no parametric fit):

* a block accessed at time a whose previous access in the same conversation was at a' is found
  iff a − a' < T; a request hits the leading run of blocks (up to its lookup cap) all found,
  i.e. the blocks whose running maximum of "age since last access" along the prompt is < T;
* every access keeps its block min(next access − a, T) (T after the last access), so T solves
  C = λ · mean over templates of Σ_accesses min(gap to next access, T)     (blocks).

Everything is precomputed once as sorted arrays, so evaluating a T is a few binary searches and
a solve is milliseconds even for hundreds of thousands of block accesses. The same formulas give
the no-eviction ceiling at T = ∞.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize

from analytic.specs import DEFAULT_BLOCK_SIZE, check_positive
from analytic.ttl import ModelResult


@dataclass(frozen=True)
class TemplateRequest:
    """One request of a template conversation, as the cache sees it."""

    time: float  # seconds from the conversation's start
    keys: Sequence[Hashable]  # blocks left cached after the request, head first
    max_hit_blocks: int  # lookup limit
    prompt_tokens: int


class TemplateProfile:
    """Sorted per-access and per-request quantities of a set of template conversations."""

    def __init__(self, conversations: Iterable[Sequence[TemplateRequest]], block_size: int = DEFAULT_BLOCK_SIZE):
        check_positive("block-size", block_size, integer=True)
        self.block_size = block_size
        self._fifo_templates: list = []  # per template: times, dense block ids per request, caps, prompts, blocks
        lookups: list[np.ndarray] = []  # raw age of each looked-up block (for the depth variant)
        prefix_ages: list[np.ndarray] = []  # running max age along each request's lookup prefix
        prefix_caps: list[np.ndarray] = []  # tokens the j-th hit block adds (capped at prompt - 1)
        first_ages, turn_of_first, gaps = [], [], []
        prompt_tokens = 0.0
        final_accesses = 0
        n = 0
        turn_requests: dict[int, int] = {}
        for conversation in conversations:
            n += 1
            requests = sorted(conversation, key=lambda r: r.time)
            if not requests:
                continue
            ages, next_gaps, last, dense = _access_ages([r.keys for r in requests], [r.time for r in requests])
            self._fifo_templates.append(([r.time for r in requests], dense, [r.max_hit_blocks for r in requests],
                                         [r.prompt_tokens for r in requests], last))
            gaps.append(next_gaps)
            final_accesses += last
            start = 0
            for turn, req in enumerate(requests, start=1):
                prompt_tokens += req.prompt_tokens
                turn_requests[turn] = turn_requests.get(turn, 0) + 1
                lookup = ages[start:start + req.max_hit_blocks]
                start += len(req.keys)
                if len(lookup):
                    lookups.append(lookup)
                    running = np.maximum.accumulate(lookup)
                    prefix_ages.append(running)
                    hit_tokens = np.minimum(np.arange(1, len(lookup) + 1) * block_size, req.prompt_tokens)
                    prefix_caps.append(np.diff(hit_tokens, prepend=0))
                    first_ages.append(running[0])
                    turn_of_first.append(turn)
        if n == 0:
            raise ValueError("conversations must contain at least one template")
        ages = np.concatenate(prefix_ages) if prefix_ages else np.zeros(0)
        weights = np.concatenate(prefix_caps).astype(float) if prefix_caps else np.zeros(0)
        # Flat per-block arrays in request order, for the depth variant.
        lengths = np.array([len(x) for x in lookups], dtype=np.int64)
        self._raw_ages = np.concatenate(lookups) if lookups else np.zeros(0)
        self._segment = np.repeat(np.arange(len(lookups)), lengths)
        self._segment_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._depth = np.arange(len(self._raw_ages)) - np.repeat(self._segment_start, lengths)
        self._weights = weights
        self._segment_turn = np.array(turn_of_first, dtype=int)
        order = np.argsort(ages, kind="stable")
        self._hit_ages = ages[order]
        self._hit_cum = np.concatenate([[0.0], np.cumsum(weights[order])])
        self._first_ages = np.sort(np.array(first_ages))
        turn_order = np.argsort(np.array(first_ages), kind="stable")
        self._first_turns = np.array(turn_of_first, dtype=int)[turn_order]
        self._gaps = np.sort(np.concatenate(gaps)) if gaps else np.zeros(0)
        self._gap_cum = np.concatenate([[0.0], np.cumsum(self._gaps)])
        self.templates = n
        self.requests = int(sum(turn_requests.values()))
        self.turn_requests = turn_requests
        self.prompt_tokens = prompt_tokens
        self._final_accesses = final_accesses  # blocks whose last access keeps them for T

    def occupancy(self, T: float) -> float:
        """Mean blocks a template conversation keeps over its life: Σ min(gap, T), in block-seconds."""
        i = np.searchsorted(self._gaps, T, side="left")
        return (self._gap_cum[i] + T * (len(self._gaps) - i) + T * self._final_accesses) / self.templates

    def occupancy_at(self, ages: np.ndarray) -> np.ndarray:
        """``occupancy`` for many T at once (inf stays inf)."""
        finite = np.where(np.isfinite(ages), ages, 0.0)
        i = np.searchsorted(self._gaps, finite, side="left")
        occ = (self._gap_cum[i] + finite * (len(self._gaps) - i) + finite * self._final_accesses) / self.templates
        return np.where(np.isfinite(ages), occ, np.inf)

    def fifo_pass(self, T: float) -> tuple[float, int, dict[int, int], float]:
        """Replay every template through a FIFO cache whose blocks live T after their insertion:
        (hit tokens, requests hit, hits by turn, mean block-seconds a template keeps).

        A block inserted at a and found at t hits iff t - a < T (a hit does not refresh it); the
        blocks after a request's first miss are (re)inserted at t, and the copy they replace kept
        its place min(T, t - a); each block's last insertion keeps it T.
        """
        bs = self.block_size
        hit_tokens, requests_hit, kept = 0.0, 0, 0.0
        turn_hits: dict[int, int] = {}
        for times, keys_per_request, caps, prompts, blocks in self._fifo_templates:
            inserted = np.full(blocks, -np.inf)
            for turn, (t, keys, cap, prompt) in enumerate(zip(times, keys_per_request, caps, prompts), start=1):
                found = (t - inserted[keys[:cap]]) < T
                hit = cap if found.all() else int(np.argmin(found))
                if hit:
                    hit_tokens += min(hit * bs, prompt)
                    requests_hit += 1
                    turn_hits[turn] = turn_hits.get(turn, 0) + 1
                rewritten = keys[hit:]
                before = inserted[rewritten]
                before = before[np.isfinite(before)]
                kept += np.minimum(T, t - before).sum()
                inserted[rewritten] = t
            kept += T * np.isfinite(inserted).sum()
        return hit_tokens, requests_hit, turn_hits, kept / self.templates

    def depth_hits(self, arrival_rate: float, capacity_blocks: float) -> tuple[float, np.ndarray]:
        """(hit tokens, per-request "hits" flags) when a block's LRU stack distance is estimated as
        λ·occupancy(age) (the distinct blocks touched since its last access, Che) plus its depth j
        (the j blocks ahead of it in its own request rank as more recent: LRU frees a request's
        tail first). A request hits the leading run of blocks whose distances are < capacity."""
        cap = float(capacity_blocks)
        distance = np.minimum(arrival_rate * self.occupancy_at(self._raw_ages) + self._depth, cap + 1)
        # One cumulative max over all requests: an offset per request keeps them apart.
        offset = self._segment * (cap + 2)
        found = (np.maximum.accumulate(distance + offset) - offset) < cap
        first = found[self._segment_start] if len(found) else np.zeros(0, dtype=bool)
        return float(self._weights[found].sum()), first

    def hit_tokens(self, T: float) -> float:
        """Hit tokens of all templates when blocks survive T after their last access."""
        return float(self._hit_cum[np.searchsorted(self._hit_ages, T, side="left")])

    def requests_hit(self, T: float) -> int:
        return int(np.searchsorted(self._first_ages, T, side="left"))

    def per_turn_hit(self, T: float) -> dict[int, float]:
        hits = np.bincount(self._first_turns[: self.requests_hit(T)],
                           minlength=max(self.turn_requests) + 1)
        return {k: float(hits[k]) / n for k, n in sorted(self.turn_requests.items())}


def _access_ages(keys_per_request: list[Sequence[Hashable]], times: list[float]):
    """For every block access (requests in order, keys head first): the time since the same
    block's previous access in this conversation (inf if none); the gaps to the next access;
    and how many distinct blocks there are (each has a last access)."""
    lengths = np.array([len(k) for k in keys_per_request])
    flat = [k for keys in keys_per_request for k in keys]
    try:
        ids = np.asarray(flat, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):  # not machine integers: number them
        numbering: dict[Hashable, int] = {}
        ids = np.array([numbering.setdefault(k, len(numbering)) for k in flat], dtype=np.int64)
    at = np.repeat(np.asarray(times, dtype=float), lengths)
    order = np.lexsort((np.arange(len(ids)), ids))  # by block, then access order
    same = ids[order][1:] == ids[order][:-1]
    ages = np.full(len(ids), np.inf)
    ages[order[1:][same]] = at[order[1:][same]] - at[order[:-1][same]]
    next_gaps = at[order[1:][same]] - at[order[:-1][same]]
    distinct = len(ids) - int(same.sum())
    dense = np.empty(len(ids), dtype=np.int64)  # blocks numbered 0 .. distinct-1, for FIFO
    dense[order] = np.cumsum(np.concatenate([[0], ~same])) if len(ids) else []
    return ages, next_gaps, distinct, np.split(dense, np.cumsum(lengths)[:-1])


LRU_VARIANTS = ("che+depth", "che")


def lru_model_from_templates(profile: TemplateProfile, arrival_rate: float, capacity_blocks: int,
                             variant: str = "che+depth") -> ModelResult:
    """Solve  capacity = λ · occupancy(T)  for T (``brentq``; occupancy rises from 0 without bound
    in T, so the bracket [0, T_hi] with occupancy(T_hi) > capacity / λ contains the root).

    ``che``: a request hits the blocks younger than T. ``che+depth`` (default): each block's
    own stack distance, λ·occupancy(age) + depth, against the capacity; it keeps the partial
    hits that LRU's tail-first eviction leaves (large contexts, few conversations)."""
    check_positive("arrival-rate", arrival_rate)
    check_positive("capacity-blocks", capacity_blocks, allow_zero=True)
    if variant not in LRU_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LRU_VARIANTS)} (got {variant!r})")
    target = capacity_blocks / arrival_rate
    if target <= 0:
        T = 0.0
    else:
        hi = 1.0
        while profile.occupancy(hi) < target:
            hi *= 2
        T = optimize.brentq(lambda t: profile.occupancy(t) - target, 0.0, hi, xtol=1e-9, rtol=1e-12)
    result = _result(profile, T, capacity_blocks, arrival_rate)
    if variant == "che":
        return result
    hit_tokens, first = profile.depth_hits(arrival_rate, capacity_blocks)
    hits = np.bincount(profile._segment_turn[first], minlength=max(profile.turn_requests) + 1)
    per_turn = {k: float(hits[k]) / n for k, n in sorted(profile.turn_requests.items())}
    return replace(result, variant=variant, token_hit_rate=hit_tokens / profile.prompt_tokens,
                   request_hit_rate=float(first.sum()) / profile.requests, per_turn_hit=per_turn)


def fifo_model_from_templates(profile: TemplateProfile, arrival_rate: float, capacity_blocks: int) -> ModelResult:
    """FIFO by its characteristic time over the templates' own accesses: solve
    capacity = λ · (block-seconds a template keeps when blocks live T_F after insertion) with
    ``brentq``; each evaluation replays the templates (:meth:`TemplateProfile.fifo_pass`)."""
    check_positive("arrival-rate", arrival_rate)
    check_positive("capacity-blocks", capacity_blocks, allow_zero=True)
    target = capacity_blocks / arrival_rate
    if target <= 0:
        T = 0.0
    else:
        hi = 1.0
        while profile.fifo_pass(hi)[3] < target:
            hi *= 2
        # The kept content need not grow smoothly in T_F (more hits, fewer rewrites): brentq
        # still lands on a point where it crosses the capacity.
        T = optimize.brentq(lambda t: profile.fifo_pass(t)[3] - target, 0.0, hi, rtol=1e-4)
    hit_tokens, requests_hit, turn_hits, kept = profile.fifo_pass(T)
    per_turn = {k: turn_hits.get(k, 0) / n for k, n in sorted(profile.turn_requests.items())}
    return ModelResult(
        method="fifo", variant="che-templates", characteristic_time=T, per_turn_hit=per_turn,
        request_hit_rate=requests_hit / profile.requests, token_hit_rate=hit_tokens / profile.prompt_tokens,
        mean_occupancy_blocks=arrival_rate * kept, capacity_blocks=capacity_blocks, block_size=profile.block_size,
    )


def ceiling_from_templates(profile: TemplateProfile) -> ModelResult:
    """Hit rates with infinite capacity (every block found again)."""
    return _result(profile, math.inf, None, None)


def _result(profile: TemplateProfile, T: float, capacity_blocks, arrival_rate) -> ModelResult:
    per_turn = profile.per_turn_hit(T)
    occupancy = arrival_rate * profile.occupancy(T) if arrival_rate and math.isfinite(T) else math.inf
    return ModelResult(
        method="lru", variant="che-templates", characteristic_time=T,
        per_turn_hit=per_turn, request_hit_rate=profile.requests_hit(T) / profile.requests,
        token_hit_rate=profile.hit_tokens(T) / profile.prompt_tokens, mean_occupancy_blocks=occupancy,
        capacity_blocks=capacity_blocks, block_size=profile.block_size,
    )
