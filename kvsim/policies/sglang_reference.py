"""A deliberately simple :class:`~kvsim.policies.sglang.SGLangPolicy`: the same semantics, with
nodes holding plain lists of keys and eviction heaps rebuilt from a scan of the tree at every
call, as SGLang's ``RadixCache.evict`` does. For tests only (the oracle of the fast one)."""

from __future__ import annotations

from collections.abc import Iterator
from heapq import heapify, heappop, heappush

from kvsim.policies.base import Pinned, Runs

__all__ = ["SGLangReference"]


def _keys(runs: Runs) -> list[int]:
    return [k for first, count in runs for k in range(first, first + count)]


def _match_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _Node:
    def __init__(self, keys: list[int], parent: _Node | None, stamp: int, nid: int) -> None:
        self.keys = keys
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.lock = 0
        self.last = stamp
        self.created = stamp
        self.hits = 0
        self.id = nid


class SGLangReference:
    """Oracle of :class:`~kvsim.policies.sglang.SGLangPolicy` (same arguments)."""

    name = "sglang"

    def __init__(self, eviction_policy: str = "lru", chunk_blocks: int | None = None) -> None:
        self.eviction_policy = eviction_policy.lower()
        self.chunk_blocks = chunk_blocks
        self._time = 0
        self._ids = 0
        self._root = _Node([], None, 0, 0)
        self._own = self._root
        self._own_split = None
        self._cap = 0

    def _now(self) -> int:
        self._time += 1
        return self._time

    def _node(self, keys, parent) -> _Node:
        self._ids += 1
        return _Node(keys, parent, self._now(), self._ids)

    def _all(self) -> list[_Node]:
        out, stack = [], [self._root]
        while stack:
            node = stack.pop()
            if node is not self._root:
                out.append(node)
            stack.extend(node.children.values())
        return out

    def __len__(self) -> int:
        return sum(len(node.keys) for node in self._all())

    def __iter__(self) -> Iterator[int]:
        return iter([k for node in self._all() for k in node.keys])

    def __contains__(self, key: object) -> bool:
        return any(key in node.keys for node in self._all())

    def nodes(self) -> list[tuple[int, list[tuple[int, int]]]]:
        """As :meth:`SGLangPolicy.nodes`, with each node's keys as maximal runs."""
        out = []

        def as_runs(keys):
            runs = []
            for k in keys:
                if runs and runs[-1][0] + runs[-1][1] == k:
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                else:
                    runs.append((k, 1))
            return runs

        def walk(node, depth):
            for key in sorted(node.children):
                child = node.children[key]
                out.append((depth, as_runs(child.keys)))
                walk(child, depth + 1)

        walk(self._root, 0)
        return out

    def _split(self, child: _Node, n: int) -> _Node:
        upper = self._node(child.keys[:n], child.parent)
        upper.lock = child.lock
        upper.hits = child.hits
        child.parent.children[child.keys[0]] = upper
        child.keys = child.keys[n:]
        child.parent = upper
        upper.children[child.keys[0]] = child
        return upper

    def _insert(self, keys: list[int]):
        stamp = self._now()
        node = self._root
        while keys and keys[0] in node.children:
            child = node.children[keys[0]]
            child.last = stamp
            n = _match_len(child.keys, keys)
            keys = keys[n:]
            if n < len(child.keys):
                node = self._split(child, n)
                break
            node = child
        if keys:
            leaf = self._node(keys, node)
            node.children[keys[0]] = leaf
        return node, stamp

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        keys = _keys(runs)[:max_hit_blocks]
        node, hit = self._root, 0
        while keys and keys[0] in node.children:
            node = node.children[keys[0]]
            n = _match_len(node.keys, keys)
            hit += n
            if n < len(node.keys):
                break
            keys = keys[n:]
        return hit

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        keys = _keys(runs)
        self._own_split = None
        node, hit = self._root, 0
        if max_hit_blocks:
            stamp = self._now()
            rest = keys[:max_hit_blocks]
            while rest and rest[0] in node.children:
                child = node.children[rest[0]]
                child.last = stamp
                n = _match_len(child.keys, rest)
                hit += n
                if n < len(child.keys):
                    node = self._split(child, n)
                    node.hits += 1
                    break
                child.hits += 1
                node = child
                rest = rest[n:]
        own = hit
        rest = keys[hit:]
        while rest and rest[0] in node.children:
            child = node.children[rest[0]]
            n = _match_len(child.keys, rest)
            own += n
            if n < len(child.keys):
                node = self._split(child, n)
                self._own_split = child
                break
            node = child
            rest = rest[n:]
        self._own = node
        self._cap = max_hit_blocks
        while node is not self._root:
            node.lock += 1
            node = node.parent
        return hit, own

    def _priority(self, node: _Node):
        return {
            "lru": lambda: node.last,
            "lfu": lambda: (node.hits, node.last),
            "fifo": lambda: node.created,
            "mru": lambda: -node.last,
            "filo": lambda: -node.created,
        }[self.eviction_policy]()

    def evict(self, n: int, pinned: Pinned = ()) -> int:
        held = {k for lo, hi in pinned for k in range(lo, hi)}

        def evictable(node):
            return not node.children and not node.lock and not held.intersection(node.keys)

        heap = [(self._priority(x), x.id, x) for x in self._all() if evictable(x)]
        heapify(heap)
        removed = 0
        while removed < n and heap:
            _, _, x = heappop(heap)
            del x.parent.children[x.keys[0]]
            removed += len(x.keys)
            parent = x.parent
            if parent is not self._root and evictable(parent):
                heappush(heap, (self._priority(parent), parent.id, parent))
        return removed

    def release(self, runs: Runs, hit_blocks: int) -> None:
        keys = _keys(runs)
        node = self._own
        while node is not self._root:
            node.lock -= 1
            node = node.parent
        prompt = self._cap
        if hit_blocks < prompt < len(keys):
            if self.chunk_blocks:
                end = hit_blocks + self.chunk_blocks
                while end < prompt:
                    self._insert(keys[:end])
                    end += self.chunk_blocks
            self._insert(keys[:prompt])
        walked, stamp = self._insert(keys)
        lower = self._own_split
        self._own_split = None
        if lower is not None and lower.parent is walked and lower.keys[0] in walked.children \
                and walked.children[lower.keys[0]] is lower:
            lower.last = stamp
