"""The seeded fault schedule of a nemesis run, and its timeline.

One fault at a time, each held for a while and then undone, with a quiet
spell between faults; which fault, which nodes and for how long all come
from ``random.Random(seed)``, so a seed names a schedule (the timing of
the processes and thus the histories still vary from run to run).

Kinds (``--faults``):

* ``kill``: SIGKILL 1..f nodes (the leader, a follower or any), restart them later;
* ``pause``: SIGSTOP the leader or a follower for 2-5 election timeouts, then SIGCONT;
* ``partition``: cut the nodes into a majority and a minority, or isolate the leader;
* ``bridge``: two halves that cannot see each other, and one node that sees both;
* ``oneway``: the leader's messages are lost but it hears the others, or the
  reverse, or one node hears nobody;
* ``slow``: every link of one node (or of all) delayed 20-250 ms, sometimes
  dropping 5-30 % of its frames;
* ``restart``: SIGTERM a node and start it again at once (a clean restart).

Never more than f = (N-1)/2 nodes are down (killed, paused or cut off) at
once unless ``max_down`` says otherwise.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.nemesis.cluster import ProcCluster, node_name
from bench.nemesis.proxy import Proxy

__all__ = ["FAULT_KINDS", "FaultEvent", "Nemesis"]

FAULT_KINDS = ("kill", "pause", "partition", "bridge", "oneway", "slow", "restart")


@dataclass
class FaultEvent:
    """One fault: its kind, what it did, when it started and when it was undone (monotonic)."""

    kind: str
    detail: str
    start: float
    end: float | None = None


@dataclass
class Nemesis:
    """Runs the schedule in a thread until ``stop()`` or the deadline given to ``start``."""

    cluster: ProcCluster
    proxy: Proxy
    seed: int
    kinds: Sequence[str]
    election_timeout_s: float
    clients: Sequence[str] = ()
    max_down: int | None = None
    say: Callable[[str], None] = print
    timeline: list[FaultEvent] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from "
                             f"{', '.join(FAULT_KINDS)}")
        self.rng = random.Random(self.seed)
        self.n = len(self.cluster.children)
        self.f = self.max_down if self.max_down is not None else (self.n - 1) // 2
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------

    def start(self, until: float) -> None:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(until,), daemon=True,
                                        name="nemesis")
        self._thread.start()

    def _run(self, until: float) -> None:
        try:
            self._stop.wait(self.rng.uniform(1.0, 2.0))  # a healthy start
            while not self._stop.is_set() and time.monotonic() < until:
                kind = self.rng.choice(list(self.kinds))
                hold = min(self.rng.uniform(1.5, 4.0), max(0.0, until - time.monotonic()))
                getattr(self, f"_{kind}")(hold)
                self._stop.wait(self.rng.uniform(0.5, 2.0))
        except BaseException as exc:
            self.error = exc
            self.say(f"nemesis failed: {type(exc).__name__}: {exc}")
        finally:
            self.heal_all()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.timeline:
            out[e.kind] = out.get(e.kind, 0) + 1
        return out

    # -- helpers -----------------------------------------------------------------------

    def _event(self, kind: str, detail: str) -> FaultEvent:
        e = FaultEvent(kind, detail, time.monotonic())
        self.timeline.append(e)
        self.say(f"[{e.start - self.t0:7.2f}s] {kind:9s} {detail}")
        return e

    def _end(self, e: FaultEvent, what: str = "healed") -> None:
        e.end = time.monotonic()
        self.say(f"[{e.end - self.t0:7.2f}s] {e.kind:9s} {what} ({e.end - e.start:.1f}s)")

    def _hold(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _leader(self) -> int | None:
        try:
            return self.cluster.leader(timeout=2.0)
        except AssertionError:
            return None

    def _target(self) -> tuple[int, str]:
        """A node to hurt: the leader, a follower or any, and which of them it is."""
        leader = self._leader()
        r = self.rng.random()
        if leader is not None and r < 0.45:
            return leader, "leader"
        others = [i for i in range(self.n) if i != leader]
        node = self.rng.choice(others)
        return node, "follower" if leader is not None else "node (no leader)"

    def _cut_groups(self, a: Sequence[int], b: Sequence[int]) -> None:
        for i in a:
            for j in b:
                self.proxy.cut(node_name(i), node_name(j))

    # -- the faults --------------------------------------------------------------------

    def _kill(self, hold: float) -> None:
        node, role = self._target()
        count = self.rng.randint(1, max(1, self.f))
        victims = [node, *self.rng.sample([i for i in range(self.n) if i != node], count - 1)]
        e = self._event("kill", f"SIGKILL {role} {victims[0]}"
                        + (f" and {victims[1:]}" if victims[1:] else ""))
        for v in victims:
            self.cluster.kill(v)
        self._hold(hold)
        for v in victims:
            self.cluster.restart(v)
        self._end(e, f"restarted {victims}")

    def _pause(self, hold: float) -> None:
        node, role = self._target()
        seconds = self.election_timeout_s * self.rng.uniform(2.0, 5.0)
        e = self._event("pause", f"SIGSTOP {role} {node} for {seconds:.1f}s")
        self.cluster.pause(node)
        self._hold(seconds)
        self.cluster.resume(node)
        self._end(e, f"SIGCONT {node}")

    def _partition(self, hold: float) -> None:
        leader = self._leader()
        if leader is not None and self.rng.random() < 0.4:
            minority, how = [leader], "leader isolated"
        else:
            size = self.rng.randint(1, self.f)
            minority, how = sorted(self.rng.sample(range(self.n), size)), "majority/minority"
        majority = [i for i in range(self.n) if i not in minority]
        e = self._event("partition", f"{how}: {majority} | {minority}")
        self._cut_groups(majority, minority)
        self._hold(hold)
        self.proxy.heal()
        self._end(e)

    def _bridge(self, hold: float) -> None:
        nodes = list(range(self.n))
        self.rng.shuffle(nodes)
        bridge, rest = nodes[0], nodes[1:]
        half = len(rest) // 2
        a, b = sorted(rest[:half]), sorted(rest[half:])
        e = self._event("bridge", f"{a} | {b}, node {bridge} sees both")
        self._cut_groups(a, b)
        self._hold(hold)
        self.proxy.heal()
        self._end(e)

    def _oneway(self, hold: float) -> None:
        leader = self._leader()
        node = leader if leader is not None else self.rng.randrange(self.n)
        others = [i for i in range(self.n) if i != node]
        r = self.rng.random()
        if r < 0.4:
            detail = f"node {node} ({'leader' if node == leader else 'any'}) is not heard"
            flows = [(node, o) for o in others]
        elif r < 0.8:
            detail = f"node {node} ({'leader' if node == leader else 'any'}) hears nobody"
            flows = [(o, node) for o in others]
        else:
            node = self.rng.choice(others)
            detail = f"follower {node} hears nobody"
            flows = [(o, node) for o in range(self.n) if o != node]
        e = self._event("oneway", detail)
        for frm, to in flows:
            self.proxy.block(node_name(frm), node_name(to))
        self._hold(hold)
        self.proxy.heal()
        self._end(e)

    def _slow(self, hold: float) -> None:
        delay = self.rng.uniform(0.02, 0.25)
        drop = self.rng.choice((0.0, 0.0, 0.05, 0.15, 0.3))
        if self.rng.random() < 0.3:
            nodes, who = list(range(self.n)), "every node"
        else:
            node = self.rng.randrange(self.n)
            nodes, who = [node], f"node {node}"
        e = self._event("slow", f"{who}: +{delay * 1000:.0f} ms"
                        + (f", {drop:.0%} of frames dropped" if drop else ""))
        peers = [node_name(i) for i in range(self.n)] + list(self.clients)
        for i in nodes:
            for other in peers:
                if other == node_name(i):
                    continue
                for frm, to in ((node_name(i), other), (other, node_name(i))):
                    self.proxy.delay(frm, to, delay)
                    if drop:
                        self.proxy.drop(frm, to, drop)
        self._hold(hold)
        self.proxy.heal()
        self._end(e)

    def _restart(self, hold: float) -> None:
        node, role = self._target()
        e = self._event("restart", f"SIGTERM {role} {node}, start again")
        self.cluster.kill(node, signal.SIGTERM)
        self.cluster.restart(node)
        self._end(e, "started")

    def heal_all(self) -> None:
        """Undo everything: rules cleared, paused nodes resumed, dead nodes restarted."""
        self.proxy.heal()
        for i in list(self.cluster.paused):
            self.cluster.resume(i)
        for i in range(self.n):
            if not self.cluster.running(i):
                self.cluster.restart(i)
