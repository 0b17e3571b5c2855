"""Golden scripts for the Raft core: ``tests/testdata/raft/*.txt`` run by tests/datadriven.py.

Each script drives a small cluster of RaftNodes over MemoryStorage, with
every message queued until a command delivers it, and prints every Ready
(what is persisted, sent, applied) and every delivered message. Verbs:

    add-nodes N [pre-vote=true] [check-quorum=true] [election=10] [heartbeat=1]
                [max-append-bytes=N] [max-inflight=N]
    tick [node|*] [n]           tick one node (or all) n times (default 1)
    campaign node               start an election on node
    propose node data           propose an entry (prints the index or the error)
    read-index node ctx         start a linearizable read
    transfer from to            leadership transfer
    process-ready [node...]     handle the Readies of the nodes (default: all)
    deliver [from] [to]         deliver the queued messages (optionally only some)
    drop from to                drop the queued messages from -> to
    stabilize [node...]         process readies and deliver until nothing moves
    partition a,b c             cut every link between the groups
    heal                        remove partitions
    compact node index          the application compacts node's storage to index
    crash node / restart node   lose everything not persisted; start again from storage
    status node / log node      print state / the persisted and unstable log

Rewrite expected outputs with ``REWRITE=1`` and read the diff.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from replication.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogEntry,
    MemoryStorage,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftNode,
    Ready,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from tests.datadriven import Case, run_file

DATA = Path(__file__).parent / "testdata" / "raft"


def fmt_entry(e: LogEntry) -> str:
    return f"{e.index}/{e.term} " + ("noop" if not e.payload else repr(e.payload.decode()))


def fmt_entries(entries: tuple[LogEntry, ...] | list[LogEntry]) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def fmt_msg(m: Message) -> str:
    head = f"{m.frm}->{m.to} "
    if isinstance(m, AppendEntries):
        body = f"App term={m.term} prev={m.prev_index}/{m.prev_term} commit={m.commit}"
        if m.entries:
            body += " entries=" + fmt_entries(m.entries)
    elif isinstance(m, AppendEntriesResponse):
        body = f"AppResp term={m.term} index={m.index}"
        if m.reject:
            body += f" rejected hint={m.reject_hint}/{m.log_term}"
    elif isinstance(m, RequestVote):
        kind = "PreVote" if m.pre_vote else "Vote"
        body = f"{kind} term={m.term} last={m.last_index}/{m.last_term}"
        if m.transfer:
            body += " transfer"
    elif isinstance(m, RequestVoteResponse):
        kind = "PreVoteResp" if m.pre_vote else "VoteResp"
        body = f"{kind} term={m.term} " + ("granted" if m.granted else "rejected")
    elif isinstance(m, Heartbeat):
        body = f"Heartbeat term={m.term} commit={m.commit}"
        if m.context:
            body += f" ctx={m.context.decode()}"
    elif isinstance(m, HeartbeatResponse):
        body = f"HeartbeatResp term={m.term}"
        if m.context:
            body += f" ctx={m.context.decode()}"
    elif isinstance(m, InstallSnapshot):
        s = m.snapshot
        body = (f"Snapshot term={m.term} snap={s.index}/{s.term} "
                f"peers={','.join(map(str, s.peers))} data={s.data.decode()}")
    elif isinstance(m, InstallSnapshotResponse):
        body = f"SnapResp term={m.term} index={m.index}"
    elif isinstance(m, TimeoutNow):
        body = f"TimeoutNow term={m.term}"
    else:  # pragma: no cover - every message type is listed above
        raise TypeError(type(m))
    return head + body


def fmt_ready(node: int, rd: Ready) -> list[str]:
    out = [f"> {node} ready"]
    if rd.soft_state is not None:
        out.append(f"  soft: leader={rd.soft_state.leader} role={rd.soft_state.role.name}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        out.append(f"  hard: term={hs.term} vote={hs.vote} commit={hs.commit}")
    if rd.snapshot is not None:
        out.append(f"  snapshot: {rd.snapshot.index}/{rd.snapshot.term}")
    if rd.entries:
        out.append("  persist: " + fmt_entries(rd.entries))
    for m in rd.messages:
        out.append("  send: " + fmt_msg(m))
    if rd.committed_entries:
        out.append("  apply: " + fmt_entries(rd.committed_entries))
    for rs in rd.read_states:
        out.append(f"  read-state: ctx={rs.context.decode()} index={rs.index}")
    for ctx in rd.dropped_reads:
        out.append(f"  read-dropped: ctx={ctx.decode()}")
    return out


def _bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text == "true"


class Harness:
    """A cluster whose messages move only when a command says so."""

    def __init__(self) -> None:
        self.nodes: dict[int, RaftNode] = {}
        self.storage: dict[int, MemoryStorage] = {}
        self.applied: dict[int, int] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.config = RaftConfig()
        self.peers: tuple[int, ...] = ()

    # -- verbs --------------------------------------------------------------------

    def handle(self, case: Case) -> str:
        fn = getattr(self, "do_" + case.command.replace("-", "_"), None)
        if fn is None:
            raise ValueError(f"{case.pos}: unknown command {case.command!r}")
        out: list[str] = fn(case)
        return "\n".join(out) if out else "ok"

    def do_add_nodes(self, case: Case) -> list[str]:
        n = int(case.positional()[0])
        kw = case.kwargs
        self.config = RaftConfig(
            election_timeout_ticks=int(kw.get("election", 10)),
            heartbeat_ticks=int(kw.get("heartbeat", 1)),
            pre_vote=_bool(kw.get("pre-vote", "true")),
            check_quorum=_bool(kw.get("check-quorum", "true")),
            max_append_bytes=int(kw.get("max-append-bytes", 1 << 20)),
            max_inflight_msgs=int(kw.get("max-inflight", 256)),
        )
        self.peers = tuple(range(1, n + 1))
        for i in self.peers:
            self.storage[i] = MemoryStorage(self.peers)
            self.applied[i] = 0
            self._start(i)
        return []

    def _start(self, i: int) -> None:
        self.nodes[i] = RaftNode(i, self.peers, self.storage[i], rng=random.Random(i),
                                 config=self.config, applied=self.applied[i])

    def _targets(self, case: Case) -> list[int]:
        pos = case.positional()
        return [int(x) for x in pos] if pos else sorted(self.nodes)

    def do_tick(self, case: Case) -> list[str]:
        pos = case.positional()
        nodes = [int(pos[0])] if pos and pos[0] != "*" else sorted(self.nodes)
        count = int(pos[1]) if len(pos) > 1 else 1
        for _ in range(count):
            for i in nodes:
                self.nodes[i].tick()
        return []

    def do_campaign(self, case: Case) -> list[str]:
        self.nodes[int(case.args[0])].campaign()
        return []

    def do_propose(self, case: Case) -> list[str]:
        node, data = int(case.args[0]), case.args[1]
        try:
            return [f"index {self.nodes[node].propose(data.encode())}"]
        except NotLeader as exc:
            return [f"error: NotLeader leader={exc.leader}"]
        except ProposalDropped as exc:
            return [f"error: ProposalDropped: {exc}"]

    def do_read_index(self, case: Case) -> list[str]:
        node, ctx = int(case.args[0]), case.args[1]
        try:
            self.nodes[node].read_index(ctx.encode())
        except NotLeader as exc:
            return [f"error: NotLeader leader={exc.leader}"]
        except ProposalDropped as exc:
            return [f"error: ProposalDropped: {exc}"]
        return []

    def do_transfer(self, case: Case) -> list[str]:
        self.nodes[int(case.args[0])].transfer_leadership(int(case.args[1]))
        return []

    def do_process_ready(self, case: Case) -> list[str]:
        out: list[str] = []
        for i in self._targets(case):
            out += self._process(i)
        return out

    def _process(self, i: int) -> list[str]:
        r = self.nodes[i]
        if not r.has_ready():
            return []
        rd = r.ready()
        st = self.storage[i]
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        self.queue.extend(rd.messages)
        if rd.snapshot is not None:
            self.applied[i] = rd.snapshot.index
        if rd.committed_entries:
            self.applied[i] = rd.committed_entries[-1].index
        r.advance(rd)
        return fmt_ready(i, rd)

    def _deliver(self, frm: int | None, to: int | None) -> list[str]:
        out: list[str] = []
        keep: list[Message] = []
        batch, self.queue = self.queue, []
        for m in batch:
            if (frm is not None and m.frm != frm) or (to is not None and m.to != to):
                keep.append(m)
            elif (m.frm, m.to) in self.cut or m.to not in self.nodes:
                out.append(f"dropped: {fmt_msg(m)}")
            else:
                out.append(f"{fmt_msg(m)}")
                self.nodes[m.to].step(m)
        self.queue = keep + self.queue
        return out

    def do_deliver(self, case: Case) -> list[str]:
        pos = [int(x) for x in case.positional()]
        return self._deliver(pos[0] if pos else None, pos[1] if len(pos) > 1 else None)

    def do_drop(self, case: Case) -> list[str]:
        frm, to = int(case.args[0]), int(case.args[1])
        dropped = [m for m in self.queue if m.frm == frm and m.to == to]
        self.queue = [m for m in self.queue if not (m.frm == frm and m.to == to)]
        return [f"dropped: {fmt_msg(m)}" for m in dropped]

    def do_stabilize(self, case: Case) -> list[str]:
        targets = self._targets(case)
        out: list[str] = []
        for _ in range(100):
            moved = False
            for i in targets:
                lines = self._process(i)
                out += lines
                moved = moved or bool(lines)
            if self.queue:
                out += self._deliver(None, None)
                moved = True
            if not moved:
                return out
        raise AssertionError(f"{case.pos}: no quiescence after 100 rounds")

    def do_partition(self, case: Case) -> list[str]:
        groups = [{int(x) for x in g.split(",")} for g in case.args]
        self.cut = {(a, b) for ga in groups for gb in groups if ga is not gb
                    for a in ga for b in gb}
        return []

    def do_heal(self, case: Case) -> list[str]:
        self.cut = set()
        return []

    def do_compact(self, case: Case) -> list[str]:
        node, index = int(case.args[0]), int(case.args[1])
        if index > self.applied[node]:
            return [f"error: {index} is not applied on {node} (applied {self.applied[node]})"]
        s = self.storage[node].compact(index, f"ckpt@{index}".encode())
        return [f"compacted {node} to {s.index}/{s.term}"]

    def do_crash(self, case: Case) -> list[str]:
        node = int(case.args[0])
        del self.nodes[node]
        return []

    def do_restart(self, case: Case) -> list[str]:
        self._start(int(case.args[0]))
        return []

    def do_status(self, case: Case) -> list[str]:
        s = self.nodes[int(case.args[0])].status()
        out = [f"{s.id}: {s.role.name} term={s.term} vote={s.vote} leader={s.leader} "
               f"commit={s.commit} applied={s.applied} log={s.first_index}..{s.last_index}"]
        if s.lead_transferee is not None:
            out.append(f"transferring to {s.lead_transferee}")
        for p, (state, match, nxt) in sorted(s.progress.items()):
            out.append(f"  {p}: {state.name} match={match} next={nxt}")
        return out

    def do_log(self, case: Case) -> list[str]:
        node = int(case.args[0])
        st = self.storage[node]
        snap = st.snapshot()
        out = [f"snapshot {snap.index}/{snap.term}"]
        stable = st.entries(st.first_index(), st.last_index() + 1, 1 << 62)
        out.append("stable " + fmt_entries(stable))
        if node in self.nodes:
            out.append("unstable " + fmt_entries(self.nodes[node].raft_log.unstable_entries()))
        return out


SCRIPTS = sorted(DATA.glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script(path: Path) -> None:
    run_file(path, Harness().handle)


def test_there_are_scripts() -> None:
    names = {p.stem for p in SCRIPTS}
    assert {"election_tie", "prevote_rejoin", "check_quorum", "log_repair", "snapshot",
            "transfer", "read_index_deposed", "restart"} <= names
