"""History checkers that let concurrency tests *prove* isolation and consistency properties.

Concurrency tests record what actually happened (which transactions committed, what each
read observed, when each client call started and finished) and hand the history to one of
the two checkers below.  The checkers are pure functions: no I/O, no printing, no global
state.  They return a result object that says whether the property holds and, if not, a
concrete witness a human can read.

* :func:`check_serializable` builds Adya's direct serialization graph (DSG) from committed
  transactions and a known version order, and looks for a cycle.  An acyclic DSG (and no
  read of aborted or unknown data) means the history is conflict-serializable; a cycle is a
  proof that it is not, and the cycle is reported edge by edge.
* :func:`check_linearizable` checks a history of single-key register operations with the
  Wing & Gong search as improved by Lowe (memoising visited configurations), one key at a
  time (linearizability is compositional, so per-key checks are sufficient).

Standard library only, so that the checkers never depend on the system under test.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

__all__ = [
    "SEARCH_LIMIT_EXCEEDED",
    "CommittedTxn",
    "EdgeKind",
    "LinearizabilityResult",
    "Op",
    "SerializabilityResult",
    "check_linearizable",
    "check_serializable",
    "classify_cycle",
]

# ---------------------------------------------------------------------------------------------
# Serializability: Adya's direct serialization graph
# ---------------------------------------------------------------------------------------------

EdgeKind = Literal["ww", "wr", "rw"]
"""Dependency kinds of the DSG: write-write, write-read (read-from) and read-write (anti)."""


@dataclass(frozen=True, slots=True)
class CommittedTxn:
    """One committed transaction as observed by a test.

    ``commit_seq`` is the transaction's position in the global version order: for every key,
    the committed writers of that key are ordered by ``commit_seq``.  ``reads`` pairs each key
    read with the id of the transaction whose write was observed (``None`` = the initial,
    absent value).  ``writes`` lists the keys the transaction wrote (its final write to each).
    """

    txn_id: str
    commit_seq: int
    reads: tuple[tuple[bytes, str | None], ...]
    writes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SerializabilityResult:
    """Outcome of :func:`check_serializable`.

    ``ok`` is true only if there are no anomalies and the DSG is acyclic.  ``cycle`` is one
    concrete cycle as ``(from_txn, to_txn, kind)`` edges (the last edge returns to the first
    transaction), or ``None``.  ``anomalies`` lists reads that cannot be explained by any
    committed write (e.g. Adya's G1a, reading data written by an aborted transaction).
    """

    ok: bool
    cycle: list[tuple[str, str, str]] | None
    anomalies: list[str]


def classify_cycle(cycle: Sequence[tuple[str, str, str]]) -> str:
    """Name the Adya phenomenon exhibited by one DSG cycle.

    Returns ``"G0"`` (write cycle: only ww edges), ``"G1c"`` (ww/wr edges only, i.e. a
    circular information flow), ``"G-single"`` (exactly one rw anti-dependency, e.g. lost
    update or read skew) or ``"G2-item"`` (two or more rw edges, e.g. write skew).  This
    classifies the given cycle only; a history may contain other cycles of other kinds.
    """
    kinds = [kind for _, _, kind in cycle]
    if not kinds:
        raise ValueError("empty cycle")
    rw = kinds.count("rw")
    if rw == 0:
        return "G0" if all(kind == "ww" for kind in kinds) else "G1c"
    return "G-single" if rw == 1 else "G2-item"


def check_serializable(
    txns: Sequence[CommittedTxn], aborted: Iterable[str] = ()
) -> SerializabilityResult:
    """Decide whether committed transactions form a serializable history (Adya PL-3).

    The version order of each key is the ``commit_seq`` order of its committed writers,
    preceded by the initial version.  Edges: ``ww`` between consecutive writers of a key;
    ``wr`` from the writer of an observed version to its reader; ``rw`` from a reader of
    version *v* to the writer of the version right after *v*.  Self-edges are skipped (a
    transaction may read its own writes).  When several kinds join the same ordered pair, the
    edge is labelled with the first of ww, wr, rw, so a reported cycle gets the most severe
    classification available for it.

    A read naming a writer that is in ``aborted`` is reported as G1a; a writer that is
    neither committed nor aborted, or a committed writer that never wrote that key, is an
    unknown-writer / unknown-version anomaly.  Such reads contribute no edges.  The graph is
    searched for a cycle with an iterative Tarjan SCC pass (no recursion, linear time), and a
    shortest cycle through one node of the first non-trivial component found is reported.

    Raises ``ValueError`` for malformed input: duplicate ``txn_id`` or ``commit_seq``, or an
    id that is both committed and aborted.
    """
    nodes = sorted(txns, key=lambda t: t.commit_seq)
    index: dict[str, int] = {}
    for i, txn in enumerate(nodes):
        if txn.txn_id in index:
            raise ValueError(f"duplicate txn_id {txn.txn_id!r}")
        if i and nodes[i - 1].commit_seq == txn.commit_seq:
            raise ValueError(
                f"duplicate commit_seq {txn.commit_seq} "
                f"({nodes[i - 1].txn_id!r} and {txn.txn_id!r})"
            )
        index[txn.txn_id] = i
    aborted_ids = frozenset(aborted)
    both = aborted_ids.intersection(index)
    if both:
        raise ValueError(f"txn ids both committed and aborted: {sorted(both)!r}")

    # Version order: writers of each key in commit_seq order (nodes are already sorted).
    writers: dict[bytes, list[int]] = {}
    for i, txn in enumerate(nodes):
        for key in dict.fromkeys(txn.writes):
            writers.setdefault(key, []).append(i)
    # position[(key, writer)] = 1-based index of that writer's version; 0 is the initial one.
    position: dict[tuple[bytes, int], int] = {}
    adj: list[dict[int, EdgeKind]] = [{} for _ in nodes]
    for key, chain in writers.items():
        for pos, writer in enumerate(chain, start=1):
            position[(key, writer)] = pos
        for earlier, later in pairwise(chain):
            adj[earlier][later] = "ww"

    anomalies: list[str] = []
    anti: list[tuple[int, int]] = []
    for reader, txn in enumerate(nodes):
        for key, writer_id in txn.reads:
            if writer_id is None:
                pos = 0
            else:
                source = index.get(writer_id)
                if source is None:
                    if writer_id in aborted_ids:
                        anomalies.append(
                            f"G1a: {txn.txn_id} read key {key!r} written by aborted {writer_id}"
                        )
                    else:
                        anomalies.append(
                            f"unknown writer: {txn.txn_id} read key {key!r} from {writer_id}, "
                            "which is neither committed nor aborted"
                        )
                    continue
                found = position.get((key, source))
                if found is None:
                    anomalies.append(
                        f"unknown version: {txn.txn_id} read key {key!r} from committed "
                        f"{writer_id}, which did not write that key"
                    )
                    continue
                pos = found
                if source != reader:
                    adj[source].setdefault(reader, "wr")
            versions = writers.get(key)
            if versions is not None and pos < len(versions):
                overwriter = versions[pos]  # writer of the version right after the one read
                if overwriter != reader:
                    anti.append((reader, overwriter))
    for reader, overwriter in anti:  # after all wr edges, so ww > wr > rw when labelling
        adj[reader].setdefault(overwriter, "rw")

    ring = _find_cycle(adj)
    cycle: list[tuple[str, str, str]] | None = None
    if ring is not None:
        cycle = [
            (nodes[a].txn_id, nodes[b].txn_id, adj[a][b])
            for a, b in zip(ring, ring[1:] + ring[:1], strict=True)
        ]
    ok = not anomalies and cycle is None
    return SerializabilityResult(ok=ok, cycle=cycle, anomalies=anomalies)


def _find_cycle(adj: Sequence[Mapping[int, object]]) -> list[int] | None:
    """Return the nodes of one cycle of the graph (in edge order), or ``None`` if acyclic.

    Iterative Tarjan: the first strongly connected component with more than one node that is
    completed holds a cycle (there are no self-loops); a BFS restricted to that component
    then yields a shortest cycle through its smallest node.  Linear in nodes plus edges.
    """
    n = len(adj)
    succ = [list(edges) for edges in adj]
    order = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    counter = 0
    for root in range(n):
        if order[root] != -1:
            continue
        order[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work: list[tuple[int, int]] = [(root, 0)]
        while work:
            v, i = work[-1]
            out = succ[v]
            if i < len(out):
                work[-1] = (v, i + 1)
                w = out[i]
                if order[w] == -1:
                    order[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w] and order[w] < low[v]:
                    low[v] = order[w]
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                if low[v] < low[parent]:
                    low[parent] = low[v]
            if low[v] == order[v]:
                component: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    return _shortest_cycle_through(min(component), set(component), succ)
    return None


def _shortest_cycle_through(start: int, members: set[int], succ: list[list[int]]) -> list[int]:
    """BFS inside one strongly connected component for a shortest cycle through ``start``."""
    parent: dict[int, int] = {start: start}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for w in succ[u]:
            if w == start:
                path = [u]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                path.reverse()
                return path
            if w in members and w not in parent:
                parent[w] = u
                queue.append(w)
    raise AssertionError("strongly connected component without a cycle")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Linearizability: Wing & Gong search with Lowe's memoisation (WGL), per key
# ---------------------------------------------------------------------------------------------

OpKind = Literal["put", "get", "delete"]


@dataclass(frozen=True, slots=True)
class Op:
    """One client call on a single-key register, as recorded by a test.

    ``value`` is the value written by a put, the value returned by a get (``None`` = key
    absent), and ``None`` for a delete.  ``complete`` is when the response arrived, or
    ``None`` when the outcome is unknown (timeout, crash, ambiguous commit): such a put or
    delete may or may not have taken effect, at any time after ``invoke``.  Ops that
    definitely failed without effect must be left out of the history by the caller.
    """

    client: int
    kind: OpKind
    key: str
    value: str | None
    invoke: float
    complete: float | None

    def __post_init__(self) -> None:
        """Reject ops that no register could produce, so histories fail loudly, not subtly."""
        if self.kind not in ("put", "get", "delete"):
            raise ValueError(f"unknown op kind {self.kind!r}")
        if self.kind == "put" and self.value is None:
            raise ValueError("a put must write a value (use delete to remove a key)")
        if self.kind == "delete" and self.value is not None:
            raise ValueError("a delete carries no value")
        if self.complete is not None and self.complete < self.invoke:
            raise ValueError(f"op completes ({self.complete}) before it is invoked ({self.invoke})")


@dataclass(frozen=True, slots=True)
class LinearizabilityResult:
    """Outcome of :func:`check_linearizable`.

    ``ok`` is true only if every key's history was proven linearizable.  ``bad_key`` names a
    key whose history is not (or could not be decided), and ``explanation`` says why in one
    line.  ``limit_exceeded`` is true when the search gave up after ``max_steps``: the result
    is then ``ok=False`` with explanation ``"search limit exceeded"``, which callers must
    treat as a failure, never as a pass.
    """

    ok: bool
    bad_key: str | None
    explanation: str
    limit_exceeded: bool = False


SEARCH_LIMIT_EXCEEDED = "search limit exceeded"


def check_linearizable(
    ops: Sequence[Op],
    initial: Mapping[str, str | None] | None = None,
    *,
    max_steps: int = 5_000_000,
) -> LinearizabilityResult:
    """Decide whether a history of register ops on many keys is linearizable.

    Each key is an independent register (initial value ``initial.get(key)``, else ``None``)
    and, by P-compositionality, is checked on its own.  Gets with unknown outcome are
    dropped since they constrain nothing; unknown-outcome puts/deletes may be linearized
    anywhere after their invocation or not at all.

    ``max_steps`` bounds the search per key (a step is one visit to a list node; roughly
    5 million steps per second).  Exceeding it yields ``ok=False``, ``limit_exceeded=True``
    and the explanation ``"search limit exceeded"``: undecided is never reported as a pass.

    Keys are checked in order of first appearance.  A definite violation on any key is
    reported in preference to a key on which the search limit was hit.
    """
    if max_steps < 0:
        raise ValueError("max_steps must be non-negative")
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        if op.kind == "get" and op.complete is None:
            continue
        by_key.setdefault(op.key, []).append(op)

    limit_key: str | None = None
    for key, history in by_key.items():
        start = None if initial is None else initial.get(key)
        verdict = _check_register(history, start, max_steps)
        if verdict is None:
            continue
        if verdict == SEARCH_LIMIT_EXCEEDED:
            if limit_key is None:
                limit_key = key
            continue
        return LinearizabilityResult(ok=False, bad_key=key, explanation=f"key {key!r}: {verdict}")
    if limit_key is not None:
        return LinearizabilityResult(
            ok=False, bad_key=limit_key, explanation=SEARCH_LIMIT_EXCEEDED, limit_exceeded=True
        )
    total = sum(len(history) for history in by_key.values())
    return LinearizabilityResult(
        ok=True, bad_key=None, explanation=f"{total} ops on {len(by_key)} keys are linearizable"
    )


def _describe(op: Op) -> str:
    """Render one op compactly for an explanation string."""
    if op.kind == "get":
        call = f"get() -> {op.value!r}"
    elif op.kind == "put":
        call = f"put({op.value!r})"
    else:
        call = "delete()"
    end = "?" if op.complete is None else str(op.complete)
    return f"client {op.client} {call} [{op.invoke}, {end}]"


def _check_register(history: list[Op], start: str | None, max_steps: int) -> str | None:
    """WGL search for one register: ``None`` if linearizable, else an explanation.

    Events (calls and known returns) are sorted by time, calls before returns at equal
    times (touching intervals count as concurrent, which tolerates clock granularity), and
    threaded on a doubly linked list.  The search walks the list: at a call it tries to
    linearize that op next (if the register allows it and the configuration ``(set of
    linearized ops as an int bitset, register value)`` is not in the cache of configurations
    already explored), removing the call and its return from the list; at a return it has
    met an op that had to be linearized already, so it backtracks.  It succeeds once every
    op with a known return is linearized; unknown-outcome writes may remain unlinearized.

    Sound reductions (each provably preserves the answer) keep the search small:

    * A get whose result equals the current register value and whose call precedes every
      pending return is linearized at once, as a *forced* step: any valid continuation can
      be reordered to take it first (it changes no state, and no pending op returned before
      it was invoked).  Backtracking never tries alternatives to a forced get, which removes
      the blow-up from orderings of concurrent reads.
    * Before searching, :func:`_check_reads_from` rejects in near-linear time the gets that
      no write could explain (future reads, stale reads), with a precise explanation.
    * A write may not move the register away from value *v* while an unlinearized get
      returning *v* completes before every unlinearized write of *v* is invoked: that get
      could never be linearized again.
    * Register values that no get returns are merged into one "unobserved" state: the
      future of the search depends only on which get results the value matches.
    * An unknown-outcome write may be omitted and has no deadline, so it only matters right
      before a get that returns its value: it is dropped up front if no get returns its
      value, and otherwise tried only when it changes the value and such a get is callable.
      This keeps timeouts from inflating the search space.
    """
    # Codes for the values gets return, in order of first appearance (deterministic).
    code = {
        value: n
        for n, value in enumerate(dict.fromkeys(op.value for op in history if op.kind == "get"))
    }
    ops = [op for op in history if op.complete is not None or op.value in code]
    if not ops:
        return None

    n_ops = len(ops)
    is_get = [op.kind == "get" for op in ops]
    value_code = [code.get(op.value, -1) for op in ops]  # -1: a value no get returns
    finish = [math.inf if op.complete is None else op.complete for op in ops]
    bits = [1 << i for i in range(n_ops)]
    state = code.get(start, -1)

    # Per observed value: its gets by completion time and its writes by invocation time,
    # with a cursor at the first unlinearized one (moved lazily, reset on undo).
    gets_of: list[list[int]] = [[] for _ in code]
    writes_of: list[list[int]] = [[] for _ in code]
    for i, v in enumerate(value_code):
        if is_get[i]:
            gets_of[v].append(i)
        elif v != -1:
            writes_of[v].append(i)
    slot = [0] * n_ops
    for v in range(len(code)):
        gets_of[v].sort(key=lambda j: (finish[j], j))
        writes_of[v].sort(key=lambda j: (ops[j].invoke, j))
        for pos, j in enumerate(gets_of[v]):
            slot[j] = pos
        for pos, j in enumerate(writes_of[v]):
            slot[j] = pos
    get_cursor = [0] * len(code)
    write_cursor = [0] * len(code)
    done = bytearray(n_ops)

    def can_leave(v: int) -> bool:
        """Whether every unlinearized get of ``v`` could still see a later write of ``v``."""
        gets = gets_of[v]
        g = get_cursor[v]
        while g < len(gets) and done[gets[g]]:
            g += 1
        get_cursor[v] = g
        if g == len(gets):
            return True
        writes = writes_of[v]
        w = write_cursor[v]
        while w < len(writes) and done[writes[w]]:
            w += 1
        write_cursor[v] = w
        return w < len(writes) and ops[writes[w]].invoke <= finish[gets[g]]

    verdict = _check_reads_from(ops, value_code, finish, state)
    if verdict is not None:
        return verdict

    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        if op.complete is not None:
            events.append((op.complete, 1, i))
    events.sort()

    # Node 0 is the head sentinel, nodes 1..m the events, node m + 1 the tail sentinel.
    m = len(events)
    tail = m + 1
    nxt = [*range(1, m + 2), tail]
    prv = [0, *range(0, m + 1)]
    entry_op = [-1] * (m + 2)
    is_call = [False] * (m + 2)
    match = [-1] * (m + 2)  # call node -> its return node (-1: unknown outcome)
    call_node = [0] * n_ops
    for node, (_, phase, i) in enumerate(events, start=1):
        entry_op[node] = i
        if phase == 0:
            is_call[node] = True
            call_node[i] = node
        else:
            match[call_node[i]] = node

    remaining = sum(1 for op in ops if op.complete is not None)
    cache: set[tuple[int, int]] = set()
    stack: list[tuple[int, int, bool]] = []  # (call node, value code before it, forced)
    linearized = 0
    best_depth = -1
    blocker = -1
    steps = 0
    entry = 0
    absorb = True  # a new configuration was entered: linearize the forced gets first
    backtrack = False
    while True:
        if steps > max_steps:
            return SEARCH_LIMIT_EXCEEDED
        if backtrack:
            backtrack = False
            forced = True
            while forced:
                if not stack:
                    return (
                        f"not linearizable: at best {best_depth} of {n_ops} ops linearize "
                        f"before {_describe(ops[blocker])} must take effect"
                    )
                steps += 1
                entry, state, forced = stack.pop()
                i = entry_op[entry]
                linearized ^= bits[i]
                done[i] = 0
                v = value_code[i]
                if is_get[i]:
                    if slot[i] < get_cursor[v]:
                        get_cursor[v] = slot[i]
                elif v != -1 and slot[i] < write_cursor[v]:
                    write_cursor[v] = slot[i]
                ret = match[entry]
                if ret != -1:
                    nxt[prv[ret]] = ret
                    prv[nxt[ret]] = ret
                    remaining += 1
                nxt[prv[entry]] = entry
                prv[nxt[entry]] = entry
            entry = nxt[entry]
        elif absorb:
            absorb = False
            node = nxt[0]
            while is_call[node]:  # calls before the first pending return
                steps += 1
                i = entry_op[node]
                if is_get[i] and value_code[i] == state:
                    config = (linearized | bits[i], state)
                    if config in cache:  # explored before and failed, so this one fails too
                        backtrack = True
                        break
                    cache.add(config)
                    stack.append((node, state, True))
                    linearized = config[0]
                    done[i] = 1
                    ret = match[node]  # a get kept in the history always has a return
                    nxt[prv[node]] = nxt[node]
                    prv[nxt[node]] = prv[node]
                    nxt[prv[ret]] = nxt[ret]
                    prv[nxt[ret]] = prv[ret]
                    remaining -= 1
                    node = prv[node]  # continue after it: its own return may have been next
                node = nxt[node]
            if not backtrack:
                if not remaining:
                    return None
                entry = nxt[0]
        elif is_call[entry]:
            steps += 1
            i = entry_op[entry]
            v = value_code[i]
            # Gets matching the value were absorbed already, so only writes are tried here.
            allowed = not is_get[i]
            if allowed and match[entry] == -1:
                # An unknown-outcome write is only worth linearizing right before a get that
                # returns its value; otherwise it can be omitted or postponed to such a point.
                allowed = False
                if v != state:
                    node = nxt[0]
                    while is_call[node]:
                        steps += 1
                        if is_get[entry_op[node]] and value_code[entry_op[node]] == v:
                            allowed = True
                            break
                        node = nxt[node]
            if allowed and v != state and state != -1:
                allowed = can_leave(state)
            if allowed:
                config = (linearized | bits[i], v)
                if config not in cache:
                    cache.add(config)
                    stack.append((entry, state, False))
                    linearized, state = config
                    done[i] = 1
                    ret = match[entry]
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    if ret != -1:
                        nxt[prv[ret]] = nxt[ret]
                        prv[nxt[ret]] = prv[ret]
                        remaining -= 1
                    absorb = True
                    continue
            entry = nxt[entry]
        else:  # a pending op returns here, so some earlier choice was wrong
            steps += 1
            if len(stack) > best_depth:
                best_depth = len(stack)
                blocker = entry_op[entry]
            backtrack = True


def _check_reads_from(
    ops: list[Op], value_code: list[int], finish: list[float], start: int
) -> str | None:
    """Necessary condition for one register: each get can read from some write in time.

    For a get *G* returning value *v*, the writes of *v* invoked no later than *G* completes
    are the only ones it can read from (plus the initial value if it is *v*); let *X* be the
    one completing last (an unknown outcome completes at infinity).  If there is none, *G*
    reads a value from the future.  If some op *Y* with a known return carried a different
    value (a write producing it, or a get returning it) strictly after *X* completed and
    strictly before *G* was invoked, then every candidate write precedes *Y* and *Y* precedes
    *G*, so the register cannot hold *v* at *G*: a stale read.  Returns an explanation for
    the first such get, or ``None``.  Runs in O(n log n), so typical violations are reported
    without an exponential search.
    """
    # Witnesses Y sorted by invocation; suffix minima of completion time for the two best
    # witnesses with distinct value codes, so "some Y invoked after t with a value other than
    # v" is answered in O(log n).
    witnesses = sorted(
        (op.invoke, finish[i], value_code[i], i)
        for i, op in enumerate(ops)
        if op.complete is not None
    )
    invokes = [w[0] for w in witnesses]
    none: tuple[float, int, int] = (math.inf, -2, -1)
    best1 = [none] * (len(witnesses) + 1)
    best2 = [none] * (len(witnesses) + 1)
    for k in range(len(witnesses) - 1, -1, -1):
        _, done_at, v, i = witnesses[k]
        first, second = best1[k + 1], best2[k + 1]
        mine = (done_at, v, i)
        if done_at < first[0]:
            best1[k], best2[k] = mine, (first if first[1] != v else second)
        else:
            best1[k] = first
            best2[k] = mine if v != first[1] and done_at < second[0] else second

    writes: dict[int, list[tuple[float, float, int]]] = {}
    for i, op in enumerate(ops):
        if op.kind != "get" and value_code[i] != -1:
            writes.setdefault(value_code[i], []).append((op.invoke, finish[i], i))
    latest: dict[int, tuple[list[float], list[tuple[float, int]]]] = {}
    for v, candidates in writes.items():
        candidates.sort()
        prefix: list[tuple[float, int]] = []
        top = (-math.inf, -1)
        for _, done_at, i in candidates:
            if done_at > top[0]:
                top = (done_at, i)
            prefix.append(top)
        latest[v] = ([c[0] for c in candidates], prefix)

    for i, op in enumerate(ops):
        if op.kind != "get":
            continue
        v = value_code[i]
        source: tuple[float, int] = (-math.inf, -1) if v == start else (math.inf, -2)
        if v in latest:
            invoked, prefix = latest[v]
            k = bisect_right(invoked, finish[i])
            if k and (source[1] == -2 or prefix[k - 1][0] > source[0]):
                source = prefix[k - 1]
        if source[1] == -2:
            return f"{_describe(op)} returned a value no write had produced by then"
        k = bisect_right(invokes, source[0])
        first, second = best1[k], best2[k]
        witness = first if first[1] != v else second
        if witness[0] < op.invoke:
            origin = "the initial value" if source[1] == -1 else _describe(ops[source[1]])
            return (
                f"{_describe(op)} is stale: {_describe(ops[witness[2]])} saw a different "
                f"value after {origin} and before the get began"
            )
    return None
