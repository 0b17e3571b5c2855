"""Runtime: the replication layer's one seam for time, waiting, randomness and threads.

Everything above the Raft core that needs a clock, a pause, a random id or
a background thread asks its runtime instead of ``time``, ``random`` or
``threading``, so one code path serves both ways a cluster runs:

* :class:`RealRuntime` -- wall-clock time (``time.monotonic``), real sleeps,
  ``random.randbytes``, daemon threads. Node processes and the threaded
  embedded cluster.
* :class:`SimulatedRuntime` -- a tick count times the tick length, seeded
  ids, no threads at all: ``spawn`` declines (the owner does the work when
  it steps) and ``pause`` advances the simulation one step instead of
  sleeping. The deterministic cluster, tests and ``python -m replication.sim``;
  one seed replays one run.

Thread-safety: RealRuntime is stateless. A SimulatedRuntime belongs to the
single thread that drives the simulation.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["RealRuntime", "Runtime", "SimulatedRuntime"]


class Runtime(Protocol):
    """Time, waiting, randomness and threads, as the replication layer uses them."""

    @property
    def deterministic(self) -> bool:
        """True when nothing runs unless the owner steps it (no threads)."""
        ...

    def now(self) -> float:
        """Seconds on this runtime's clock (only differences mean anything)."""
        ...

    def pause(self, seconds: float) -> None:
        """Let about ``seconds`` pass: sleep, or take one simulation step."""
        ...

    def wait(self, ready: Callable[[float], bool], timeout: float) -> bool:
        """Wait until ``ready`` is true, at most ``timeout`` seconds of this clock.

        ``ready(t)`` may block up to ``t`` seconds waiting for its condition
        (the real runtime calls it once with the whole timeout); the
        simulated one calls ``ready(0)`` between steps.
        """
        ...

    def random_id(self) -> bytes:
        """16 random bytes: an id, not a secret."""
        ...

    def spawn(self, target: Callable[[], None], name: str) -> threading.Thread | None:
        """Run ``target`` in a started daemon thread -- or, simulated, not at all (None):
        the owner then does the thread's work itself when it steps."""
        ...


class RealRuntime:
    """Wall-clock time, real sleeps and threads."""

    deterministic = False

    def now(self) -> float:
        return time.monotonic()

    def pause(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def wait(self, ready: Callable[[float], bool], timeout: float) -> bool:
        return ready(max(0.0, timeout))

    def random_id(self) -> bytes:
        return random.randbytes(16)

    def spawn(self, target: Callable[[], None], name: str) -> threading.Thread | None:
        thread = threading.Thread(target=target, daemon=True, name=name)
        thread.start()
        return thread


class SimulatedRuntime:
    """A tick count, a seeded RNG, and a step function instead of threads.

    ``step`` is what one unit of simulated time does (a RaftGroup ticks its
    nodes; a Cluster also lets every replica apply); the owner sets it, and
    calls :meth:`advance` once per tick.
    """

    deterministic = True

    def __init__(self, tick_s: float, rng: random.Random) -> None:
        self.tick_s = tick_s
        self.ticks = 0
        self.step: Callable[[], None] = self.advance
        self._rng = rng

    def advance(self) -> None:
        self.ticks += 1

    def now(self) -> float:
        return self.ticks * self.tick_s

    def pause(self, seconds: float) -> None:
        self.step()

    def wait(self, ready: Callable[[float], bool], timeout: float) -> bool:
        deadline = self.now() + timeout
        while not ready(0.0):
            if self.now() >= deadline:
                return False
            self.step()
        return True

    def random_id(self) -> bytes:
        return self._rng.randbytes(16)

    def spawn(self, target: Callable[[], None], name: str) -> threading.Thread | None:
        return None
