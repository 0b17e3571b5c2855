"""Write batches: argument checks, the in-memory batch, and its byte encoding.

Grammar of an encoded batch body (little-endian; see FORMAT.md)::

    ops    := count:u32 op{count}
    op     := kind:u8 key_len:u32 value_len:u32 key[key_len] value[value_len]
    kind   := DELETE=0 | PUT=1 | RANGE_DELETE=2   # a DELETE has value_len = 0
    batch  := sequence:u64 ops               # as stored in a WAL write group

A batch holds at most one operation per key (the last one wins), so all of
its operations can share one sequence number. A range deletion
(``Engine.delete_range``) is a batch of one RANGE_DELETE op whose key is the
range's start and whose value its end; in memory its ops are
``{start: RangeEnd(end)}`` (:class:`RangeEnd` marks the value). Pure module:
no I/O, no locks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from engine.encoding import Kind
from engine.errors import CorruptionError, InvalidArgument
from engine.options import Options

__all__ = [
    "BatchContext",
    "RangeEnd",
    "SyncPolicy",
    "WriteBatch",
    "check_bound",
    "check_entries",
    "check_key",
    "check_keys",
    "check_sync",
    "check_value",
    "decode_ops",
    "encode_ops",
    "prefix_bounds",
    "range_of",
    "scan_bounds",
]

_OP = struct.Struct("<BII")
_COUNT = struct.Struct("<I")
_SEQ = struct.Struct("<Q")

Buffer = bytes | bytearray | memoryview


class RangeEnd(bytes):
    """The value of a range deletion's only op: the exclusive end of ``[start, end)``."""

    __slots__ = ()


def range_of(ops: dict[bytes, bytes | None]) -> tuple[bytes, bytes] | None:
    """``(start, end)`` if ``ops`` is a range deletion, else None."""
    if len(ops) == 1:
        ((start, end),) = ops.items()
        if type(end) is RangeEnd:
            return start, end
    return None


def _as_bytes(obj: object, what: str) -> bytes:
    if type(obj) is bytes:
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"{what} must be bytes-like, got {type(obj).__name__}")


def check_key(key: object, options: Options) -> bytes:
    """Return ``key`` as bytes, or raise TypeError / InvalidArgument naming it."""
    k = key if type(key) is bytes else _as_bytes(key, "key")
    if len(k) > options.max_key_bytes:
        raise InvalidArgument(
            f"key of {len(k)} bytes exceeds max_key_bytes={options.max_key_bytes}"
        )
    return k


def check_bound(obj: object, what: str, options: Options) -> bytes:
    """A range bound (``delete_range``'s start or end) checked like a key, naming ``what``."""
    b = _as_bytes(obj, what)
    if len(b) > options.max_key_bytes:
        raise InvalidArgument(
            f"{what} of {len(b)} bytes exceeds max_key_bytes={options.max_key_bytes}")
    return b


def check_keys(keys: object, options: Options) -> list[bytes]:
    """Return the keys of the iterable ``keys`` as a list of bytes (``multi_get``).

    Each key is checked like ``check_key``; a bad one raises TypeError or
    InvalidArgument naming its position (``keys[3]``). A single bytes or str
    object is refused rather than read as a sequence of ints or characters.
    """
    if isinstance(keys, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"keys must be an iterable of keys, got a single {type(keys).__name__}")
    try:
        items: list[Any] = list(keys)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"keys must be an iterable of keys, got {type(keys).__name__}") from None
    limit = options.max_key_bytes
    for i, k in enumerate(items):
        if type(k) is not bytes:
            if not isinstance(k, (bytearray, memoryview)):
                raise TypeError(f"keys[{i}] must be bytes-like, got {type(k).__name__}")
            k = items[i] = bytes(k)
        if len(k) > limit:
            raise InvalidArgument(f"keys[{i}] of {len(k)} bytes exceeds max_key_bytes={limit}")
    return items


def check_sync(sync: object) -> bool | None:
    """Return a per-write ``sync=`` argument (True, False or None for the store's default)."""
    if sync is not None and type(sync) is not bool:
        raise TypeError(f"sync must be True, False or None, got {type(sync).__name__}")
    return sync


class SyncPolicy:
    """What a write's ``sync=`` argument means for one engine: True, False or its default.

    ``default`` is ``Options.sync == "always"``. ``sync=True`` needs the
    write-ahead log, except on a read-only engine (whose writes are refused
    anyway, with ReadOnlyError).
    """

    __slots__ = ("default", "read_only", "wal")

    def __init__(self, options: Options, *, read_only: bool) -> None:
        self.default = options.sync == "always"
        self.wal = options.wal
        self.read_only = read_only

    def check(self, sync: object) -> bool:
        """Check an explicit ``sync=`` argument (True or False) for this engine."""
        if check_sync(sync) and not self.wal and not self.read_only:
            raise InvalidArgument("sync=True needs the write-ahead log; this engine has "
                                  "wal=False (its durability comes from elsewhere)")
        return bool(sync)

    def durable(self, sync: bool | None) -> bool:
        """Whether a write with this ``sync=`` argument must be synced (None: the default)."""
        return self.default if sync is None else self.check(sync)


def prefix_bounds(prefix: bytes) -> tuple[bytes, bytes | None]:
    """The key range ``[lo, hi)`` holding exactly the keys that start with ``prefix``.

    ``hi`` is the shortest key greater than every key with the prefix: the
    prefix with trailing 0xff bytes dropped and its last byte incremented.
    A prefix of only 0xff bytes (or the empty prefix) has no such key:
    ``hi`` is None, no upper bound.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return prefix, None
    return prefix, stripped[:-1] + bytes((stripped[-1] + 1,))


def scan_bounds(start: object, end: object, prefix: object, options: Options
                ) -> tuple[bytes | None, bytes | None]:
    """The checked ``[lo, hi)`` of a scan given by ``start``/``end`` or by ``prefix``.

    Mixing ``prefix`` with ``start`` or ``end`` is ambiguous and raises
    InvalidArgument; a prefix that is not bytes-like is a TypeError naming
    ``prefix``. See :func:`prefix_bounds` for the prefix's range.
    """
    if prefix is not None:
        if start is not None or end is not None:
            raise InvalidArgument("scan: give either prefix or start/end, not both")
        p = _as_bytes(prefix, "prefix")
        if len(p) > options.max_key_bytes:
            raise InvalidArgument(
                f"prefix of {len(p)} bytes exceeds max_key_bytes={options.max_key_bytes}")
        return prefix_bounds(p)
    lo = None if start is None else check_key(start, options)
    hi = None if end is None else check_key(end, options)
    return lo, hi


def check_value(value: object, options: Options) -> bytes:
    """Return ``value`` as bytes, or raise TypeError / InvalidArgument naming it."""
    v = value if type(value) is bytes else _as_bytes(value, "value")
    if len(v) > options.max_value_bytes:
        raise InvalidArgument(
            f"value of {len(v)} bytes exceeds max_value_bytes={options.max_value_bytes}"
        )
    return v


def encode_ops(ops: dict[bytes, bytes | None]) -> bytes:
    """Encode ``ops`` (key -> value, ``None`` meaning delete) as an ``ops`` body."""
    parts: list[bytes] = [_COUNT.pack(len(ops))]
    append = parts.append
    pack = _OP.pack
    for key, value in ops.items():
        if value is None:
            append(pack(Kind.DELETE, len(key), 0))
            append(key)
        else:
            append(pack(Kind.PUT if type(value) is bytes else _value_kind(value),
                        len(key), len(value)))
            append(key)
            append(value)
    return b"".join(parts)


def _value_kind(value: bytes) -> Kind:
    return Kind.RANGE_DELETE if type(value) is RangeEnd else Kind.PUT


def decode_ops(
    data: bytes, pos: int = 0, *, path: str = "<batch>", base: int = 0
) -> tuple[dict[bytes, bytes | None], int]:
    """Decode an ``ops`` body at ``pos``; return (ops, end offset).

    Damage is reported as CorruptionError at ``base + offset`` in ``path``.
    """
    n = len(data)
    try:
        (count,) = _COUNT.unpack_from(data, pos)
        pos += 4
        ops: dict[bytes, bytes | None] = {}
        unpack = _OP.unpack_from
        for _ in range(count):
            kind, klen, vlen = unpack(data, pos)
            pos += 9
            key = data[pos : pos + klen]
            pos += klen
            if kind == Kind.PUT:
                ops[key] = data[pos : pos + vlen]
                pos += vlen
            elif kind == Kind.DELETE and vlen == 0:
                ops[key] = None
            elif kind == Kind.RANGE_DELETE and count == 1:
                ops[key] = RangeEnd(data[pos : pos + vlen])
                pos += vlen
            else:
                raise CorruptionError(path, base + pos, f"bad operation kind {kind}/{vlen}")
            if pos > n:
                raise CorruptionError(path, base + pos, "operation runs past end of record")
    except struct.error as exc:
        raise CorruptionError(path, base + pos, f"truncated batch: {exc}") from None
    return ops, pos


class WriteBatch:
    """An atomic group of puts and deletes, applied all or nothing.

    Arguments are checked as they are added, so a bad key or value raises
    before the batch reaches the engine. Use it through ``db.batch()`` (a
    context manager that commits on clean exit) or pass it to ``db.write()``.
    Not thread-safe; build a batch in one thread.
    """

    __slots__ = ("_bytes", "_options", "ops")

    def __init__(self, options: Options | None = None) -> None:
        self._options = options or Options()
        self.ops: dict[bytes, bytes | None] = {}
        self._bytes = 0

    def _account(self, key: bytes, value: bytes | None) -> None:
        delta = len(value) if value else 0
        if key in self.ops:
            old = self.ops[key]
            delta -= len(old) if old else 0
        else:
            delta += len(key)
        if self._bytes + delta > self._options.max_batch_bytes:
            raise InvalidArgument(
                f"batch of {self._bytes + delta} bytes exceeds "
                f"max_batch_bytes={self._options.max_batch_bytes}"
            )
        self._bytes += delta
        self.ops[key] = value

    def put(self, key: Buffer, value: Buffer) -> None:
        k = check_key(key, self._options)
        v = check_value(value, self._options)
        self._account(k, v)

    def delete(self, key: Buffer) -> None:
        self._account(check_key(key, self._options), None)

    def clear(self) -> None:
        self.ops.clear()
        self._bytes = 0

    @property
    def byte_size(self) -> int:
        """Sum of key and value lengths (the quantity ``max_batch_bytes`` limits)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[tuple[bytes, bytes | None]]:
        return iter(self.ops.items())

    def to_bytes(self) -> bytes:
        """The batch's ``ops`` encoding, e.g. to ship it in a replication log entry."""
        return encode_ops(self.ops)

    @classmethod
    def from_bytes(cls, data: bytes, options: Options | None = None) -> WriteBatch:
        """Inverse of :meth:`to_bytes`; raises CorruptionError on malformed input."""
        ops, end = decode_ops(data)
        if end != len(data):
            raise CorruptionError("<batch>", end, "trailing bytes after batch")
        if range_of(ops) is not None:
            raise CorruptionError("<batch>", 0, "a write batch cannot hold a range deletion")
        batch = cls(options)
        for key, value in ops.items():
            batch._account(key, value)
        return batch


def encode_batch(sequence: int, ops: dict[bytes, bytes | None]) -> bytes:
    """A WAL batch: sequence number followed by the ops body."""
    return _SEQ.pack(sequence) + encode_ops(ops)


def decode_batch(
    data: bytes, pos: int, *, path: str, base: int
) -> tuple[int, dict[bytes, bytes | None], int]:
    """Decode a WAL batch at ``pos``; return (sequence, ops, end)."""
    try:
        (seq,) = _SEQ.unpack_from(data, pos)
    except struct.error:
        raise CorruptionError(path, base + pos, "truncated batch sequence") from None
    ops, end = decode_ops(data, pos + 8, path=path, base=base)
    return seq, ops, end


class BatchContext(WriteBatch):
    """``with db.batch() as b:`` -- a WriteBatch written atomically on clean exit.

    ``write(batch, sync)`` is the store's write (``Engine.write``); an
    exception inside the block discards the batch.
    """

    __slots__ = ("_sync", "_write")

    def __init__(self, options: Options, write: Callable[[WriteBatch, bool | None], None],
                 sync: bool | None = None) -> None:
        super().__init__(options)
        self._write = write
        self._sync = sync

    def __enter__(self) -> BatchContext:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self._write(self, self._sync)


def check_entries(entries: Sequence[tuple[int, WriteBatch]]
                  ) -> tuple[list[tuple[int | None, dict[bytes, Any]]], int]:
    """``apply_many``'s (sequence, batch) pairs checked: their (sequence, ops) and byte total.

    Sequences must be ints in ``[1, 2**56)`` (the WAL's sequence field) and
    batches WriteBatch objects; anything else raises before anything is written.
    """
    items: list[tuple[int | None, dict[bytes, Any]]] = []
    nbytes = 0
    for sequence, batch in entries:
        if not isinstance(batch, WriteBatch):
            raise TypeError(f"batch must be a WriteBatch, got {type(batch).__name__}")
        if type(sequence) is not int:
            raise TypeError(f"sequence must be an int, got {type(sequence).__name__}")
        if not 0 < sequence < 1 << 56:
            raise InvalidArgument(f"sequence must be in [1, 2**56), got {sequence}")
        items.append((sequence, dict(batch.ops)))
        nbytes += batch.byte_size
    return items, nbytes
