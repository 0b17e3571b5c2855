"""The client protocol: requests and responses in CLIENT_REQUEST/CLIENT_RESPONSE frames.

A client connection (``docs/FORMAT.md``, "Client protocol") is a hello
with role CLIENT followed by requests, each answered in order by one
response on the same connection; a client sends the next request only after
the previous answer (so no multiplexing, and a client that stops waiting
closes the connection: its stream is no longer in step). Payloads use a
small tagged value codec of our own -- never pickle on the wire::

    request  := value                 a list [id:int, op:str, args:dict]
    response := value                 a list [id:int, status:str, result:value]
    value    := NONE=0 | FALSE=1 | TRUE=2
              | INT=3 i64                       (little-endian, signed)
              | BYTES=4 len:u32 bytes[len]
              | STR=5 len:u32 utf8[len]
              | LIST=6 count:u32 value{count}
              | DICT=7 count:u32 (STR-value value){count}     keys are str

``status`` is ``ok`` (``result`` is the op's answer) or an error code of
:data:`ERRORS` (``result`` is ``{"message": str, ...}``; ``not_leader``
adds ``leader`` and ``address``, the node believed to lead). The client
raises the same exception class the embedded store would.

Invariants (:class:`~replication.transport.wire.WireError` when one fails):
decoding is exact (every byte consumed once, trailing bytes are errors),
nesting is at most :data:`MAX_DEPTH` deep, and dict keys are unique str.
Pure module.
"""

from __future__ import annotations

import struct
from typing import Any

from engine.errors import (
    ClosedError,
    InvalidArgument,
    SerializationFailure,
    TransactionClosed,
)
from replication.errors import AmbiguousCommit, NotLeader, Unavailable
from replication.transport.wire import WireError

__all__ = ["ERRORS", "MAX_DEPTH", "decode_value", "encode_value", "error_of", "error_result",
           "raise_error"]

MAX_DEPTH = 8
_NONE, _FALSE, _TRUE, _INT, _BYTES, _STR, _LIST, _DICT = range(8)
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")


def encode_value(value: Any) -> bytes:
    """The codec's bytes of ``value``; TypeError for a type it cannot carry."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(v: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH}")
    if v is None:
        out.append(_NONE)
    elif v is True:
        out.append(_TRUE)
    elif v is False:
        out.append(_FALSE)
    elif type(v) is int:
        out.append(_INT)
        out += _I64.pack(v)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        out.append(_BYTES)
        out += _U32.pack(len(v))
        out += v
    elif isinstance(v, str):
        data = v.encode("utf-8")
        out.append(_STR)
        out += _U32.pack(len(data))
        out += data
    elif isinstance(v, (list, tuple)):
        out.append(_LIST)
        out += _U32.pack(len(v))
        for item in v:
            _encode(item, out, depth + 1)
    elif isinstance(v, dict):
        out.append(_DICT)
        out += _U32.pack(len(v))
        for key, item in v.items():
            if not isinstance(key, str):
                raise TypeError(f"dict keys must be str, got {type(key).__name__}")
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    else:
        raise TypeError(f"the client protocol cannot carry {type(v).__name__}")


def decode_value(data: bytes) -> Any:
    """The value ``data`` encodes; WireError if it is not exactly one well-formed value."""
    value, pos = _decode(data, 0, 0)
    if pos != len(data):
        raise WireError(f"{len(data) - pos} trailing bytes after a client value")
    return value


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise WireError(f"client value cut off at byte {len(data)} (needed {pos + n})")


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise WireError(f"client value nested deeper than {MAX_DEPTH}")
    _need(data, pos, 1)
    tag = data[pos]
    pos += 1
    if tag == _NONE:
        return None, pos
    if tag == _FALSE:
        return False, pos
    if tag == _TRUE:
        return True, pos
    if tag == _INT:
        _need(data, pos, 8)
        return _I64.unpack_from(data, pos)[0], pos + 8
    if tag in (_BYTES, _STR, _LIST, _DICT):
        _need(data, pos, 4)
        n = _U32.unpack_from(data, pos)[0]
        pos += 4
        if tag in (_BYTES, _STR):
            _need(data, pos, n)
            raw = data[pos:pos + n]
            if tag == _BYTES:
                return raw, pos + n
            try:
                return raw.decode("utf-8"), pos + n
            except UnicodeDecodeError as exc:
                raise WireError(f"client string is not UTF-8: {exc}") from None
        if n > len(data) - pos:  # every item takes at least one byte: a lie about n
            raise WireError(f"client {'list' if tag == _LIST else 'dict'} of {n} items "
                            f"in {len(data) - pos} bytes")
        if tag == _LIST:
            items = []
            for _ in range(n):
                item, pos = _decode(data, pos, depth + 1)
                items.append(item)
            return items, pos
        d: dict[str, Any] = {}
        for _ in range(n):
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, str) or key in d:
                raise WireError(f"bad client dict key {key!r}")
            d[key], pos = _decode(data, pos, depth + 1)
        return d, pos
    raise WireError(f"unknown client value tag {tag}")


# -- errors ------------------------------------------------------------------------

# Error code -> the exception a client raises. Order matters in error_of: the
# first class an exception is an instance of names it.
ERRORS: dict[str, type[Exception]] = {
    "not_leader": NotLeader,
    "unavailable": Unavailable,
    "ambiguous": AmbiguousCommit,
    "serialization": SerializationFailure,
    "transaction_closed": TransactionClosed,
    "closed": ClosedError,
    "invalid": InvalidArgument,
    "type": TypeError,
    "value": ValueError,
}


def error_of(exc: BaseException) -> str:
    """The error code a server answers ``exc`` with ("error" for anything unexpected)."""
    for code, cls in ERRORS.items():
        if isinstance(exc, cls):
            return code
    return "error"


def error_result(exc: BaseException) -> tuple[str, dict[str, Any]]:
    """The (status, result) a server answers ``exc`` with (a NotLeader's address is the
    server's to add: it knows the peers' addresses)."""
    code = error_of(exc)
    info: dict[str, Any] = {"message": str(exc) or type(exc).__name__}
    if isinstance(exc, NotLeader):
        info["leader"] = exc.leader
    elif isinstance(exc, AmbiguousCommit):
        info["index"], info["term"] = exc.index, exc.term
    elif isinstance(exc, SerializationFailure):
        info["reason"] = exc.reason
        info["detail"] = str(exc).partition("): ")[2]
    return code, info


def raise_error(code: str, result: Any) -> None:
    """Raise the client-side exception of an error response."""
    info = result if isinstance(result, dict) else {}
    message = str(info.get("message", code))
    if code == "not_leader":
        leader, address = info.get("leader"), info.get("address")
        raise NotLeader(message, leader=leader if type(leader) is int else None,
                        address=address if isinstance(address, str) else None)
    if code == "ambiguous":
        raise AmbiguousCommit(message, index=int(info.get("index") or 0),
                              term=int(info.get("term") or 0))
    if code == "serialization":
        reason = info.get("reason")
        raise SerializationFailure(reason if isinstance(reason, str) else "write_write",  # type: ignore[arg-type]
                                   str(info.get("detail", "")))
    cls = ERRORS.get(code)
    if cls is None:
        raise Unavailable(f"server error: {message}")
    raise cls(message)
