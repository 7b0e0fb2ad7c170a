"""Conversations as sequences of turns: what each request asks of the prefix cache.

A conversation is an iterator of ``Turn``; the engine waits ``delay`` and serves the turn. The
synthetic source (DESIGN.md §2) draws a conversation's turns, sizes and think times from a
``Workload`` when it starts; other sources (trace templates) produce the same ``Turn`` records.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from analytic.specs import Workload

# Block j of conversation c has key c * KEY_STRIDE + j; system-prompt blocks are 0 .. S//bs - 1
# (shared by every conversation). Integer keys hash faster than tuples, and a conversation's
# blocks are runs of consecutive ints, which the cache serves per run.
KEY_STRIDE = 1 << 32


class RunKeys(Sequence):
    """The keys of ``runs`` (``(first_key, count)`` pairs), head first, as a read-only sequence
    computed on demand: a turn of a long context costs no per-block work until read."""

    __slots__ = ("runs",)

    def __init__(self, runs: tuple) -> None:
        self.runs = runs

    def __len__(self) -> int:
        return sum(count for _, count in self.runs)

    def __iter__(self) -> Iterator[int]:
        for first, count in self.runs:
            yield from range(first, first + count)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += len(self)
        if index >= 0:
            for first, count in self.runs:
                if index < count:
                    return first + index
                index -= count
        raise IndexError("key index out of range")


class Turn(NamedTuple):
    """One request of a conversation, as the cache sees it."""

    index: int  # 1-based turn number within its conversation
    delay: float  # seconds from the previous turn's arrival (0 for the first turn)
    keys: Sequence  # blocks left cached after the request (full blocks of prompt + output), head first
    max_hit_blocks: int  # lookup limit: at least one prompt token is computed
    alloc_blocks: int  # blocks held while served, the partial last one included
    prompt_tokens: int
    prompt_blocks: int  # ceil(prompt / block size): the block-hit-rate denominator
    # The same keys as (first_key, count) runs of consecutive ints, if the source has them: the
    # cache's fast path (PrefixCache.serve_runs). None: the cache reads ``keys``.
    runs: tuple | None = None
    output_tokens: int = 0  # the response's tokens: its decode time when a service time is set


def synthetic_conversation(workload: Workload, block_size: int, rng: np.random.Generator,
                           conversation_id: int) -> Iterator[Turn]:
    """Turns of one conversation: prompt_k = context_{k-1} + u_k, context_k = prompt_k + r_k."""
    n_turns = int(workload.turns.sample(rng, 1)[0])
    inputs = workload.input_tokens.sample(rng, n_turns).tolist()
    outputs = workload.output_tokens.sample(rng, n_turns).tolist()
    gaps = workload.think_time.sample(rng, n_turns - 1).tolist()
    system_blocks = workload.system_prompt_tokens // block_size
    base = conversation_id * KEY_STRIDE
    context = workload.system_prompt_tokens
    for k in range(n_turns):
        prompt = context + inputs[k]
        if prompt < 1:  # an empty prompt is not a request; it carries no tokens either
            prompt = 1
        total = prompt + outputs[k]
        full = total // block_size
        if full <= system_blocks:
            runs = ((0, full),) if full else ()
        elif system_blocks:
            runs = ((0, system_blocks), (base + system_blocks, full - system_blocks))
        else:
            runs = ((base, full),)
        yield Turn(k + 1, gaps[k - 1] if k else 0.0, RunKeys(runs),
                   (prompt - 1) // block_size, -(-total // block_size), prompt, -(-prompt // block_size),
                   runs, outputs[k])
        context = total


def interleaved_turns(workload: Workload, conversations: int, block_size: int, seed: int = 0) -> list[Turn]:
    """The turns of ``conversations`` synthetic conversations in arrival order, without SimPy
    (zero service time): the request stream a cache sees, for benchmarks and curve tests."""
    rng = np.random.default_rng(seed)
    events = []
    start = 0.0
    for cid in range(1, conversations + 1):
        start += rng.exponential(1 / workload.arrival_rate)
        at = start
        for turn in synthetic_conversation(workload, block_size, rng, cid):
            at += turn.delay
            events.append((at, cid, turn.index, turn))
    events.sort(key=lambda e: e[:3])
    return [e[3] for e in events]
