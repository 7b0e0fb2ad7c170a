"""Conversations as sequences of turns: what each request asks of the prefix cache.

A conversation is an iterator of ``Turn``; the engine waits ``delay`` and serves the turn. The
synthetic source (DESIGN.md §2) draws a conversation's turns, sizes and think times from a
``Workload`` when it starts; other sources (trace templates) produce the same ``Turn`` records.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from analytic.specs import Workload

# Block j of conversation c has key c * KEY_STRIDE + j; system-prompt blocks are 0 .. S//bs - 1
# (shared by every conversation). Integer keys hash faster than tuples.
KEY_STRIDE = 1 << 32


class Turn(NamedTuple):
    """One request of a conversation, as the cache sees it."""

    index: int  # 1-based turn number within its conversation
    delay: float  # seconds from the previous turn's arrival (0 for the first turn)
    keys: list  # blocks left cached after the request (full blocks of prompt + output), head first
    max_hit_blocks: int  # lookup limit: at least one prompt token is computed
    alloc_blocks: int  # blocks held while served, the partial last one included
    prompt_tokens: int
    prompt_blocks: int  # ceil(prompt / block size): the block-hit-rate denominator


def synthetic_conversation(workload: Workload, block_size: int, rng: np.random.Generator,
                           conversation_id: int) -> Iterator[Turn]:
    """Turns of one conversation: prompt_k = context_{k-1} + u_k, context_k = prompt_k + r_k."""
    n_turns = int(workload.turns.sample(rng, 1)[0])
    inputs = workload.input_tokens.sample(rng, n_turns)
    outputs = workload.output_tokens.sample(rng, n_turns)
    gaps = workload.think_time.sample(rng, n_turns - 1)
    system_blocks = workload.system_prompt_tokens // block_size
    base = conversation_id * KEY_STRIDE
    keys: list[int] = []
    context = workload.system_prompt_tokens
    for k in range(n_turns):
        prompt = context + int(inputs[k])
        if prompt < 1:  # an empty prompt is not a request; it carries no tokens either
            prompt = 1
        total = prompt + int(outputs[k])
        full = total // block_size
        if full > len(keys):
            start = len(keys)
            if start < system_blocks:
                keys.extend(range(start, min(full, system_blocks)))
                start = system_blocks
            keys.extend(range(base + start, base + full))
        # The context only grows, so one list serves every turn: the cache reads it during the
        # call only, and a copy would cost O(context) per turn. (A Turn kept for later sees the
        # list grown by the turns after it.)
        yield Turn(k + 1, float(gaps[k - 1]) if k else 0.0, keys,
                   (prompt - 1) // block_size, -(-total // block_size), prompt, -(-prompt // block_size))
        context = total
