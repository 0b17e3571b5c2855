"""The rule for writes outside transactions: :class:`BlindWrites`, shared by both backends.

Owns the registry of blind writes (the engine's ``put``, ``batch``,
``delete_range``; a replicated store's writes outside transactions) that a
transaction's snapshot may not see yet, and decides when each is handed to
the certifier (:meth:`engine.ssi.Certifier.record_blind_write`) and
settled. It touches no other certifier state. The standalone engine (``engine/commit.py``,
``engine/local.py``) and the replicated leader (``replication/node.py``)
both call it, so neither carries its own copy of the rule. Re-exported by
``engine.ssi``.

Pure: no I/O, no clock, no threads. Thread-safety: the caller holds the lock
that serialises its certifier for every call (the engine's ``_mutex``, the
leader's lock) and passes the time in. The invariants are in
:class:`BlindWrites`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from engine.txnstate import TxnState

if TYPE_CHECKING:  # engine.ssi re-exports this module
    from engine.ssi import Certifier

__all__ = ["BlindWrite", "BlindWrites"]


class BlindWrite:
    """One write outside any transaction, from :meth:`BlindWrites.submit` until settled.

    ``state`` is its certifier record once it has one: at submit if the
    certifier was tracking, else from the first :meth:`BlindWrites.on_begin`
    whose snapshot could not see it; None if it never needed one. Fields
    belong to the registry (caller holds its lock).
    """

    __slots__ = ("keys", "ranges", "seq", "settled", "state")

    def __init__(self, seq: int, keys: Collection[bytes],
                 ranges: tuple[tuple[bytes, bytes], ...]) -> None:
        self.seq = seq
        self.keys = keys
        self.ranges = ranges
        self.state: TxnState | None = None
        self.settled = False

    def __repr__(self) -> str:
        return f"BlindWrite(seq={self.seq}, state={self.state}, settled={self.settled})"


class BlindWrites:
    """The rule for writes outside transactions (puts, batches): recorded when it matters.

    A blind write a transaction cannot see must be known to the certifier
    (a transaction reading a key it overwrites needs the rw-edge; one
    writing that key must lose first-committer-wins). Recording every put
    would make puts pay for transactions nobody runs, so a write is recorded
    at once only while the certifier tracks something, and otherwise kept
    *pending* until the next transaction begins. Pure, like the certifier:
    the caller holds the lock that serialises its certifier for every call
    and passes the time in.

    Protocol:

    * :meth:`submit` in the critical section that gives the write its
      sequence (and, replicated, hands it to the log).
    * :meth:`on_begin` in the critical section that takes a new
      transaction's snapshot, before :meth:`Certifier.begin`: every pending
      write the snapshot cannot see (``seq > snapshot``) is recorded now;
      the others are in this snapshot and in every later one.
    * :meth:`settle` once per write when its fate is known: committed once
      it is visible to every snapshot taken from then on, aborted once it
      is lost. Settling a pending write as committed before it is visible
      would put it in neither the snapshot nor the certifier.

    Invariants (given snapshots that never decrease and the rules above):

    1. At every :meth:`on_begin`, each unsettled write is visible to the
       snapshot or recorded with the certifier -- never in neither.
    2. Every state this registry records is settled through it: once every
       write is settled nothing is pending and the certifier holds no state
       of a blind write.
    3. Writes are recorded in submit order, which is sequence order
       (ssi.py invariant 1).
    """

    __slots__ = ("_certifier", "_pending")

    def __init__(self, certifier: Certifier) -> None:
        self._certifier = certifier
        self._pending: dict[BlindWrite, None] = {}  # insertion (= sequence) order

    @property
    def pending(self) -> int:
        """Writes submitted while nothing was tracked, not yet seen by a begin or settled."""
        return len(self._pending)

    def submit(self, seq: int, keys: Collection[bytes], now: float,
               ranges: tuple[tuple[bytes, bytes], ...] = ()) -> BlindWrite:
        """A write of ``keys`` (and ``delete_range`` ``ranges``) at ``seq``; its handle.

        ``keys`` is kept as given until it is recorded: the caller must not
        change it (the engine and the leader pass the batch's own dict).
        """
        w = BlindWrite(seq, keys, ranges)
        if self._certifier.tracking:
            w.state = self._certifier.record_blind_write(keys, seq, now, ranges)
            w.keys = ()
        else:
            self._pending[w] = None
        return w

    def on_begin(self, snapshot: int, now: float) -> None:
        """A snapshot at ``snapshot`` is being taken: record the pending writes it cannot see."""
        if not self._pending:
            return
        certifier = self._certifier
        for w in self._pending:
            if w.seq > snapshot:
                w.state = certifier.record_blind_write(w.keys, w.seq, now, w.ranges)
            w.keys = ()
        self._pending.clear()

    def settle(self, w: BlindWrite, committed: bool, *, reason: str = "lost") -> None:
        """``w`` is visible to every new snapshot (``committed``) or lost; forget it.

        ``reason`` is the rollback reason counted for a lost write. Settling
        twice is a no-op.
        """
        if w.settled:
            return
        w.settled = True
        self._pending.pop(w, None)
        w.keys = ()
        if w.state is not None:
            if committed:
                self._certifier.committed(w.state)
            else:
                self._certifier.abort(w.state, reason)
