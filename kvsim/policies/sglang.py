"""Policy ``sglang``: SGLang's ``RadixCache`` (``python/sglang/srt/mem_cache/radix_cache.py``).

The cache is a radix tree of pages (here: blocks, page size = block size). A node holds a run of
consecutive pages with one parent; a child is found by its first page. What follows is what SGLang
does, with the function it comes from:

* **Matching** (``match_prefix`` / ``_match_prefix_helper``): the request's first
  ``max_hit_blocks`` keys (SGLang matches ``input_ids[:-1]``, truncated to whole pages) are walked
  from the root. Every node visited is touched (``last_access_time`` = the time of the match: the
  whole matched path, and also a node the match ends inside). A match that ends inside a node
  splits it (``_split_node``): the new upper node gets a fresh creation and access time (a new
  ``TreeNode``), the lower one keeps its own.
* **Inserting** (``insert`` / ``_insert_helper``): the same walk over all the keys, touching every
  node on the way, splitting the node it diverges or ends inside, and hanging the rest below as
  one new leaf. A request inserts twice: its prompt's full pages after prefill
  (``cache_unfinished_req``, called from ``process_batch_result_prefill`` "so others can match"),
  optionally chunk by chunk (chunked prefill, ``chunk_blocks``), then prompt + output at the end
  (``cache_finished_req``). So a turn adds up to two nodes: its new prompt blocks, and its
  output blocks below them.
* **Eviction** (``evict``): only leaves with ``lock_ref == 0``, whole, in the order of the
  eviction strategy (``evict_policy.py``: ``lru`` = last access, ``lfu`` = (hit count, last
  access), ``fifo`` = creation, ``mru``, ``filo``); a parent whose last child goes becomes a leaf
  and a candidate in the same call. Eviction stops once at least ``n`` blocks are gone, so it
  may remove more; :meth:`SGLangPolicy.evict` returns how many.
* **Locking** (``inc_lock_ref`` / ``dec_lock_ref``): the request's matched path is locked from
  :meth:`~SGLangPolicy.acquire` to :meth:`~SGLangPolicy.release`; a node holding a key of
  ``pinned`` (requests in service) is locked too.

Mapping to this project: keys are chained block hashes, so a key always sits under the same parent
(checked on every trace in ``../shared/traces`` and on the synthetic workload). The tree does not
rely on it: children are found per parent, as SGLang finds them by page contents, so a key arriving
under another parent is a miss there and gets a node of its own (both copies are cached blocks and
count in ``len``). The differences from SGLang are listed in :data:`DIFFERENCES`.

Cost: a request walks the nodes of its path, comparing runs of keys, not blocks; eviction pops a
heap of leaves with lazy deletion. So a request costs O(nodes on its path + runs) plus
O(log n) per heap operation.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from heapq import heapify, heappop, heappush

from kvsim.policies.base import Pinned, Runs

__all__ = ["DIFFERENCES", "EVICTION_STRATEGIES", "SGLangPolicy"]

EVICTION_STRATEGIES = ("lru", "lfu", "fifo", "mru", "filo")
"""The ``eviction_policy`` values SGLang's ``RadixCache`` takes (``priority`` aside: requests here
carry no priority)."""

DIFFERENCES = (
    "Time is a counter of cache operations, not time.monotonic(); ties cannot occur.",
    "A request's keys are inserted when it begins service (PrefixCache calls release() then), "
    "not after prefill / at finish: its output blocks are hits for others while it is served.",
    "The prompt boundary of the cache_unfinished_req insert is taken as max_hit_blocks; SGLang's "
    "is one block later when the prompt is a whole number of blocks.",
    "The request's cached keys beyond the match cap (a repeated request's last prompt block and "
    "output) are locked too (the contract protects every cached key of the request); SGLang "
    "locks the matched path only. The node they end inside is split at acquire for that.",
    "evict() is asked for the deficit; SGLang's scheduler asks for the whole allocation "
    "(evict_from_tree_cache evicts num_tokens when fewer are free) and decodes page by page.",
    "lfu: RadixCache never increments hit_count (its lfu is lru); here each match adds 1 to every "
    "node it passes, and a split upper node inherits the count, as HiRadixCache does.",
    "No scheduler: no repeated match_prefix calls while a request waits, no LPM ordering, no "
    "priority strategy, no hierarchical (host) cache, no extra_key namespaces.",
)
"""What this policy does differently from SGLang, one sentence each."""


class _Node:
    """A radix node: the keys ``runs`` (``(first, count)`` pairs, head first) below ``parent``."""

    __slots__ = ("runs", "size", "parent", "children", "lock", "last", "created", "hits", "version",
                 "id", "alive")

    def __init__(self, runs: list, size: int, parent: _Node | None, stamp: int, nid: int) -> None:
        self.runs = runs
        self.size = size
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.lock = 0
        self.last = stamp
        self.created = stamp
        self.hits = 0
        self.version = 0
        self.id = nid
        self.alive = True


def _common(runs: list, req: list, ri: int, off: int, limit: int) -> tuple[int, int, int]:
    """How many leading keys of ``runs`` equal the request's keys from the cursor ``(ri, off)``
    (at most ``limit``), and the cursor after them."""
    n = ni = noff = 0
    n_runs = len(runs)
    n_req = len(req)
    while n < limit and ni < n_runs and ri < n_req:
        nf, nc = runs[ni]
        rf, rc = req[ri]
        if nf + noff != rf + off:
            break
        step = min(nc - noff, rc - off, limit - n)
        n += step
        noff += step
        off += step
        if noff == nc:
            ni += 1
            noff = 0
        if off == rc:
            ri += 1
            off = 0
    return n, ri, off


def _take(req: list, ri: int, off: int, count: int) -> list:
    """The runs of ``count`` request keys from the cursor ``(ri, off)``."""
    out = []
    while count:
        first, c = req[ri]
        step = min(c - off, count)
        out.append((first + off, step))
        count -= step
        ri += 1
        off = 0
    return out


def _split_runs(runs: list, n: int) -> tuple[list, list]:
    head = []
    i = 0
    while n:
        first, c = runs[i]
        if c > n:
            head.append((first, n))
            return head, [(first + n, c - n)] + runs[i + 1:]
        head.append((first, c))
        n -= c
        i += 1
    return head, runs[i:]


def _pinned(pinned: Pinned, runs: list) -> bool:
    """Whether a key of ``runs`` is in ``pinned`` (sorted disjoint ``(lo, hi)`` ranges)."""
    for lo, count in runs:
        i = bisect_right(pinned, (lo, float("inf")))
        if i and pinned[i - 1][1] > lo:
            return True
        if i < len(pinned) and pinned[i][0] < lo + count:
            return True
    return False


class SGLangPolicy:
    """SGLang's radix cache as an :class:`~kvsim.policies.EvictionPolicy` (see the module).

    ``eviction_policy`` is one of :data:`EVICTION_STRATEGIES` (SGLang's
    ``--radix-eviction-policy``, default ``lru``). ``chunk_blocks`` models chunked prefill: the
    prompt is inserted every ``chunk_blocks`` new blocks (SGLang's ``--chunked-prefill-size`` /
    block size); None inserts it once.
    """

    name = "sglang"

    def __init__(self, eviction_policy: str = "lru", chunk_blocks: int | None = None) -> None:
        strategy = eviction_policy.lower() if isinstance(eviction_policy, str) else None
        if strategy not in EVICTION_STRATEGIES:
            raise ValueError(f"eviction_policy must be one of {', '.join(EVICTION_STRATEGIES)} "
                             f"(got {eviction_policy!r})")
        if chunk_blocks is not None and (type(chunk_blocks) is not int or chunk_blocks < 1):
            raise ValueError(f"chunk_blocks must be an int >= 1 or None (got {chunk_blocks!r})")
        self.eviction_policy = strategy
        self.chunk_blocks = chunk_blocks
        self._lfu = strategy == "lfu"
        # FIFO and FILO rank by creation: a touch does not move a leaf in the heap.
        self._touch_moves = strategy in ("lru", "lfu", "mru")
        self._clock = 0
        self._ids = 0
        self._root = _Node([], 0, None, 0, 0)
        self._size = 0
        self._nodes = 0
        self._heap: list = []
        # The current request (acquire .. release).
        self._own: _Node = self._root
        self._own_split: _Node | None = None
        self._cap = 0

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        return self._size

    def _all(self) -> Iterator[_Node]:
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def __iter__(self) -> Iterator[int]:
        for node in self._all():
            for first, count in node.runs:
                yield from range(first, first + count)

    def __contains__(self, key: object) -> bool:
        """O(nodes): for tests and inspection."""
        if type(key) is not int:
            return False
        return any(first <= key < first + count for node in self._all() for first, count in node.runs)

    def nodes(self) -> list[tuple[int, list[tuple[int, int]]]]:
        """The tree as ``(depth, runs)`` per node, depth first, children by first key (for tests)."""
        out = []

        def walk(node: _Node, depth: int) -> None:
            for key in sorted(node.children):
                child = node.children[key]
                out.append((depth, list(child.runs)))
                walk(child, depth + 1)

        walk(self._root, 0)
        return out

    # ------------------------------------------------------------------ helpers

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _priority(self, node: _Node):
        s = self.eviction_policy
        if s == "lru":
            return node.last
        if s == "lfu":
            return (node.hits, node.last)
        if s == "fifo":
            return node.created
        if s == "mru":
            return -node.last
        return -node.created

    def _push(self, node: _Node) -> None:
        """(Re)enter a leaf in the eviction heap; older entries of it become stale."""
        node.version += 1
        heap = self._heap
        heappush(heap, (self._priority(node), node.id, node.version, node))
        if len(heap) > 4 * self._nodes + 1024:
            self._heap = [e for e in heap if e[3].alive and e[2] == e[3].version and not e[3].children]
            heapify(self._heap)

    def _new_node(self, runs: list, size: int, parent: _Node) -> _Node:
        self._ids += 1
        self._nodes += 1
        return _Node(runs, size, parent, self._tick(), self._ids)

    def _split(self, child: _Node, n: int) -> _Node:
        """Split ``child`` after its first ``n`` keys; return the new upper node (SGLang's
        ``_split_node``: a new TreeNode, so a fresh access and creation time; it keeps the lock)."""
        head, tail = _split_runs(child.runs, n)
        parent = child.parent
        upper = self._new_node(head, n, parent)
        upper.lock = child.lock
        upper.hits = child.hits
        upper.children[tail[0][0]] = child
        parent.children[head[0][0]] = upper
        child.parent = upper
        child.runs = tail
        child.size -= n
        return upper

    def _insert(self, req: list, end: int) -> tuple[_Node, int]:
        """SGLang's ``insert`` of the request's first ``end`` keys; returns the node where the
        walk over cached keys ended (before any new leaf) and the stamp of the walk."""
        stamp = self._tick()
        node = self._root
        pos = ri = off = 0
        touched = []
        while pos < end:
            child = node.children.get(req[ri][0] + off)
            if child is None:
                break
            n, ri, off = _common(child.runs, req, ri, off, end - pos)
            child.last = stamp
            touched.append(child)
            pos += n
            if n < child.size:
                node = self._split(child, n)
                break
            node = child
        if pos < end:
            leaf = self._new_node(_take(req, ri, off, end - pos), end - pos, node)
            node.children[leaf.runs[0][0]] = leaf
            self._size += end - pos
            self._push(leaf)
        if self._touch_moves:
            for t in touched:
                if not t.children:
                    self._push(t)
        return node, stamp

    # ------------------------------------------------------------------ the policy

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        req = list(runs)
        node = self._root
        pos = ri = off = 0
        while pos < max_hit_blocks:
            child = node.children.get(req[ri][0] + off)
            if child is None:
                break
            n, ri, off = _common(child.runs, req, ri, off, max_hit_blocks - pos)
            pos += n
            if n < child.size:
                break
            node = child
        return pos

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        req = list(runs)
        n_keys = sum(count for _, count in req)
        node = self._root
        pos = ri = off = 0
        self._own_split = None
        if max_hit_blocks:
            # match_prefix(key[:max_hit_blocks]): touch the path, split where it ends inside a node.
            stamp = self._tick()
            lfu = self._lfu
            touched = []
            while pos < max_hit_blocks:
                child = node.children.get(req[ri][0] + off)
                if child is None:
                    break
                n, ri, off = _common(child.runs, req, ri, off, max_hit_blocks - pos)
                child.last = stamp
                touched.append(child)
                pos += n
                if n < child.size:
                    node = self._split(child, n)
                    if lfu:
                        node.hits += 1
                    break
                if lfu:
                    child.hits += 1
                node = child
            if self._touch_moves:
                for t in touched:
                    if not t.children:
                        self._push(t)
        hit = pos
        # The request's cached keys beyond the cap: its own, locked with the match (split off
        # where they end inside a node, so that the rest of that node stays evictable).
        while pos < n_keys:
            child = node.children.get(req[ri][0] + off)
            if child is None:
                break
            n, ri, off = _common(child.runs, req, ri, off, n_keys - pos)
            pos += n
            if n < child.size:
                node = self._split(child, n)
                self._own_split = child
                break
            node = child
        self._own = node
        self._cap = max_hit_blocks
        while node.parent is not None:
            node.lock += 1
            node = node.parent
        return hit, pos

    def evict(self, n: int, pinned: Pinned = ()) -> int:
        heap = self._heap
        root = self._root
        removed = 0
        aside = []
        while removed < n and heap:
            entry = heappop(heap)
            node = entry[3]
            if not node.alive or entry[2] != node.version or node.children:
                continue  # stale
            if node.lock or (pinned and _pinned(pinned, node.runs)):
                aside.append(entry)
                continue
            parent = node.parent
            del parent.children[node.runs[0][0]]
            node.alive = False
            removed += node.size
            self._size -= node.size
            self._nodes -= 1
            if parent is not root and not parent.children:
                self._push(parent)
        for entry in aside:
            heappush(heap, entry)
        return removed

    def release(self, runs: Runs, hit_blocks: int) -> None:
        req = list(runs)
        n_keys = sum(count for _, count in req)
        node = self._own
        while node.parent is not None:
            node.lock -= 1
            node = node.parent
        self._own = self._root
        # cache_unfinished_req after each prefill chunk and after prefill (the prompt's full
        # blocks), then cache_finished_req (every full block).
        prompt = self._cap
        if hit_blocks < prompt < n_keys:
            if self.chunk_blocks:
                for end in range(hit_blocks + self.chunk_blocks, prompt, self.chunk_blocks):
                    self._insert(req, end)
            self._insert(req, prompt)
        walked, stamp = self._insert(req, n_keys)
        # SGLang's final insert touches the node it ends inside before splitting it; here that
        # split was made at acquire, so touch the lower part now.
        lower, self._own_split = self._own_split, None
        if lower is not None and lower.alive and lower.parent is walked:
            lower.last = stamp
            if self._touch_moves and not lower.children:
                self._push(lower)
