"""Scans across range deletions: cut into pieces so a deleted span costs what an empty one does,
and return exactly what a whole scan returns."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine.fs import MemFS
from engine.reads import covered_segments

keys = st.sampled_from([bytes([c]) for c in b"abcdefgh"]
                       + [bytes([c, d]) for c in b"bdf" for d in b"ab"])
tombstones = st.lists(st.tuples(keys, keys, st.integers(1, 9)).filter(lambda t: t[0] < t[1]),
                      max_size=5)


@given(st.one_of(st.none(), keys), st.one_of(st.none(), keys), tombstones, st.data())
def test_pieces_tile_the_range_and_carry_the_covering_sequence(
        lo: bytes | None, hi: bytes | None, rts: list[tuple[bytes, bytes, int]],
        data: st.DataObject) -> None:
    if lo is not None and hi is not None and lo >= hi:
        return
    pieces = covered_segments(lo, hi, rts)
    assert pieces[0][0] == lo and pieces[-1][1] == hi
    for (_, end, _), (start, _, _) in pairwise(pieces):
        assert end == start is not None
    for a, b, seq in pieces:
        assert a is None or b is None or a < b
        # Every key of the piece is covered by tombstones of at least ``seq``, and ``seq``
        # is the highest sequence covering all of it (the naive twin: check each key).
        probe = data.draw(keys)
        if (a is None or probe >= a) and (b is None or probe < b):
            covering = [t for s, e, t in rts if s <= probe < e]
            assert seq == 0 or max(covering, default=0) >= seq
        if seq:  # (a merged piece may be covered by several tombstones of that sequence)
            assert a is not None and b is not None
            assert seq in {t for s, e, t in rts if s < b and a < e}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "del_range", "flush", "compact"]),
                          keys, keys), max_size=25),
       st.one_of(st.none(), keys), st.one_of(st.none(), keys), st.booleans())
def test_a_scan_across_range_deletions_matches_the_model(
        ops: list[tuple[str, bytes, bytes]], lo: bytes | None, hi: bytes | None,
        reverse: bool) -> None:
    db = engine.open("/db", fs=MemFS(), memtable_bytes=1 << 16)
    model: dict[bytes, bytes] = {}
    try:
        for i, (op, a, b) in enumerate(ops):
            if op == "put":
                db.put(a, b"v%d" % i)
                model[a] = b"v%d" % i
            elif op == "del_range" and a < b:
                db.delete_range(a, b)
                model = {k: v for k, v in model.items() if not a <= k < b}
            elif op == "flush":
                db.flush()
            elif op == "compact":
                db.compact()
        if lo is not None and hi is not None and lo >= hi:
            return
        want = sorted((k, v) for k, v in model.items()
                      if (lo is None or k >= lo) and (hi is None or k < hi))
        if reverse:
            want.reverse()
        assert list(db.scan(lo, hi, reverse=reverse)) == want
    finally:
        db.close()
