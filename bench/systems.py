"""The systems under test, behind one small interface so every workload runs on each.

:class:`System` is what a workload sees: ``put``, ``put_many`` (one atomic
batch), ``get``, ``get_many`` (the system's best batched read), ``scan`` (up
to ``n`` pairs from ``start``), ``close``. A system is opened per workload
in a fresh directory, ``durable=True`` meaning "a write is on stable
storage when it returns" -- ``sync="always"`` for
stratakv, ``synchronous=FULL`` for sqlite3, ``sync=True`` for lmdb and
RocksDB -- and ``durable=False`` meaning each system's bulk-load setting.

Peers are configured the way their users would: sqlite3 in WAL mode with a
``WITHOUT ROWID`` table ``(k BLOB PRIMARY KEY, v BLOB)`` and one connection per
thread; lmdb and rocksdict (RocksDB) only when installed (``pip install
'.[peers]'``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import engine

__all__ = ["NETWORK_PEERS", "SYSTEMS", "System", "available_systems"]


class System(ABC):
    name: str = "?"

    def __init__(self, path: str, durable: bool, options: dict[str, Any] | None = None) -> None:
        self.path = path
        self.durable = durable

    @abstractmethod
    def put(self, key: bytes, value: bytes) -> None: ...

    @abstractmethod
    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Write ``items`` as one atomic batch / transaction."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def scan(self, start: bytes, n: int) -> list[tuple[bytes, bytes]]: ...

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The values of ``keys`` in order: the system's best batched read (default: a loop)."""
        get = self.get
        return [get(k) for k in keys]

    @abstractmethod
    def close(self) -> None: ...

    def reopen(self) -> None:
        """Close and open again (reads "after reopen" start from a cold process state)."""
        self.close()
        self.__init__(self.path, self.durable)  # type: ignore[misc]

    def bytes_on_disk(self) -> int:
        total = 0
        for root, _, files in os.walk(self.path if os.path.isdir(self.path)
                                      else os.path.dirname(self.path)):
            for f in files:
                total += os.path.getsize(os.path.join(root, f))
        return total


class Strata(System):
    name = "stratakv"

    def __init__(self, path: str, durable: bool, options: dict[str, Any] | None = None) -> None:
        super().__init__(path, durable)
        self._options = dict(options or {})
        self.db = engine.open(path, sync="always" if durable else "none", **self._options)

    def reopen(self) -> None:
        self.close()
        self.db = engine.open(self.path, sync="always" if self.durable else "none",
                              **self._options)

    def put(self, key: bytes, value: bytes) -> None:
        self.db.put(key, value)

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        with self.db.batch() as b:
            for k, v in items:
                b.put(k, v)

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return self.db.multi_get(keys)

    def scan(self, start: bytes, n: int) -> list[tuple[bytes, bytes]]:
        out = []
        for item in self.db.scan(start):
            out.append(item)
            if len(out) >= n:
                break
        return out

    def write_amplification(self) -> float:
        """Bytes flushes and compactions wrote, over the bytes of user data (keys + values)."""
        s = self.db.stats()
        written = s.get("bytes_flushed", 0) + s.get("bytes_compacted_out", 0)
        return float(written / max(1, s.get("user_bytes_written", 0)))

    def settle(self) -> None:
        """Let background compaction finish (so a read benchmark measures the final shape)."""
        self.db.compact()

    def close(self) -> None:
        self.db.close()


class Sqlite(System):
    name = "sqlite3"

    def __init__(self, path: str, durable: bool, options: dict[str, Any] | None = None) -> None:
        super().__init__(path, durable)
        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, "db.sqlite")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) "
                             "WITHOUT ROWID")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.file, isolation_level=None, timeout=120,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'OFF'}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def put(self, key: bytes, value: bytes) -> None:
        self._conn().execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        c = self._conn()
        c.execute("BEGIN")
        c.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", items)
        c.execute("COMMIT")

    def get(self, key: bytes) -> bytes | None:
        row = self._conn().execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def scan(self, start: bytes, n: int) -> list[tuple[bytes, bytes]]:
        return self._conn().execute(
            "SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT ?", (start, n)).fetchall()

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """One ``SELECT ... WHERE k IN (?, ..., ?)`` (sqlite's limit is 32,766 variables)."""
        marks = ",".join("?" * len(keys))
        rows = dict(self._conn().execute(f"SELECT k, v FROM kv WHERE k IN ({marks})", keys))
        return [rows.get(k) for k in keys]

    def settle(self) -> None:
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                c.close()
            self._all.clear()
        self._local = threading.local()


class Lmdb(System):
    name = "lmdb"

    def __init__(self, path: str, durable: bool, options: dict[str, Any] | None = None) -> None:
        import lmdb

        super().__init__(path, durable)
        os.makedirs(path, exist_ok=True)
        self.env = lmdb.open(path, map_size=1 << 36, sync=durable, metasync=durable,
                             writemap=not durable, max_spare_txns=64, lock=True)

    def put(self, key: bytes, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key, value)

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            for k, v in items:
                txn.put(k, v)

    def get(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            v = txn.get(key)
            return None if v is None else bytes(v)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """All keys in one read transaction."""
        with self.env.begin() as txn:
            get = txn.get
            return [None if (v := get(k)) is None else bytes(v) for k in keys]

    def scan(self, start: bytes, n: int) -> list[tuple[bytes, bytes]]:
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor()
            if cur.set_range(start):
                for k, v in cur:
                    out.append((bytes(k), bytes(v)))
                    if len(out) >= n:
                        break
        return out

    def settle(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()


class RocksDict(System):
    name = "rocksdb"

    def __init__(self, path: str, durable: bool, options: dict[str, Any] | None = None) -> None:
        import rocksdict

        super().__init__(path, durable)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        self._wo = rocksdict.WriteOptions()  # the WAL is on by default
        self._wo.sync = durable
        # Any: with raw_mode, keys and values are bytes, which the stubs cannot say.
        self.db: Any = rocksdict.Rdict(path, options=opts)
        self.db.set_write_options(self._wo)
        self._rocksdict = rocksdict

    def put(self, key: bytes, value: bytes) -> None:
        self.db[key] = value

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        wb = self._rocksdict.WriteBatch(raw_mode=True)
        for k, v in items:
            wb.put(k, v)
        self.db.write(wb, self._wo)

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)  # type: ignore[no-any-return]

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """rocksdict's ``get(list)``: RocksDB's MultiGet."""
        return self.db.get(keys)  # type: ignore[no-any-return]

    def scan(self, start: bytes, n: int) -> list[tuple[bytes, bytes]]:
        out = []
        for k, v in self.db.items(from_key=start):
            out.append((k, v))
            if len(out) >= n:
                break
        return out

    def settle(self) -> None:
        self.db.compact_range(None, None)

    def close(self) -> None:
        self.db.close()


SYSTEMS: dict[str, Callable[..., System]] = {
    "stratakv": Strata, "sqlite3": Sqlite, "lmdb": Lmdb, "rocksdb": RocksDict,
}
_MODULES = {"lmdb": "lmdb", "rocksdb": "rocksdict"}

# Server peers: name -> how to get its binary (never a requirement).
NETWORK_PEERS: dict[str, str] = {
    "etcd": "an etcd binary on PATH (Debian: apt-get install etcd-server)",
}


def on_path(binary: str) -> bool:
    """Whether ``binary`` is an executable on PATH (a network peer's server)."""
    return shutil.which(binary) is not None


def available_systems(wanted: Iterable[str] | None = None) -> list[str]:
    """stratakv and sqlite3 always; lmdb and rocksdb when their bindings are installed;
    etcd when its binary is on PATH."""
    names = [n for n in SYSTEMS if n not in _MODULES or importlib.util.find_spec(_MODULES[n])]
    names += [n for n in NETWORK_PEERS if on_path(n)]
    if wanted is not None:
        wanted = set(wanted)
        names = [n for n in names if n in wanted]
    return names
