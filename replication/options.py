"""ClusterOptions: the embedded cluster's settings, frozen and validated before any file is touched.

Every duration carries its unit in its name (``election_timeout_ms``,
``request_timeout_s``), engine settings are an :class:`engine.Options`, and
:meth:`ClusterOptions.from_settings` turns keyword settings into options --
a misspelled name is an InvalidArgument naming the known ones, raised
before :class:`~replication.cluster.Cluster` opens a file. The node
process has its own :class:`replication.server.ServerOptions` (its settings
are per process).

The names of earlier releases (``election_delay`` and ``latency`` in
seconds, ``timeout``, ``engine_options``) are still accepted, with a
DeprecationWarning, and converted.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import engine
from engine.errors import InvalidArgument

__all__ = ["DEFAULT_ENGINE_OPTIONS", "ClusterOptions"]

# The replicas' engines: no WAL (the replicated log is the write-ahead log; an
# engine is persisted by flushes, and the log is compacted only behind them).
DEFAULT_ENGINE_OPTIONS: dict[str, Any] = {
    "wal": False,
    "memtable_bytes": 4 << 20,
    "block_cache_bytes": 8 << 20,
}

_LEGACY: dict[str, tuple[str, Callable[[Any], Any]]] = {  # old name -> (new name, conversion)
    "election_delay": ("election_timeout_ms", lambda s: s * 1000),
    "latency": ("link_latency_ms", lambda s: s * 1000),
    "timeout": ("request_timeout_s", lambda s: s),
    "engine_options": ("engine", lambda o: o),
}


def _engine_options(value: object) -> engine.Options:
    if isinstance(value, engine.Options):
        return value.validate()
    if value is None or isinstance(value, dict):  # replica defaults, then the caller's
        return engine.Options(**{**DEFAULT_ENGINE_OPTIONS, **(value or {})}).validate()
    raise InvalidArgument(f"engine must be an engine.Options or a dict, got "
                          f"{type(value).__name__}")


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Settings of an embedded :class:`~replication.cluster.Cluster`.

    ``election_timeout_ms``: a follower that hears no leader for a random
    [T, 2T) campaigns, a leader that hears no quorum for T steps down; the
    leader heartbeats every T/5 (Raft ticks are T/10).
    ``link_latency_ms``: one-way delay of every message on the in-process
    network (to see how latency costs; 0 in production use).
    ``request_timeout_s``: how long a store operation may take before it is
    reported as Unavailable (or AmbiguousCommit).
    ``max_log_entries``: the log is compacted once it holds more entries
    than this (behind what every running replica persisted).
    ``seed``: the seed of every random choice of the group (elections,
    network), so a deterministic run replays. ``deterministic``: no threads;
    time moves only by :meth:`Cluster.step` (tests, the simulator).
    ``engine``: the replicas' engine settings (the dict form merges into
    :data:`DEFAULT_ENGINE_OPTIONS`).
    """

    election_timeout_ms: float = 150.0
    link_latency_ms: float = 0.0
    request_timeout_s: float = 2.0
    max_log_entries: int = 50_000
    seed: int | None = None
    deterministic: bool = False
    engine: engine.Options = field(default_factory=lambda: _engine_options(None))

    def validate(self) -> ClusterOptions:
        """Self, if every setting is in range; else InvalidArgument naming the setting."""
        for name in ("election_timeout_ms", "request_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgument(f"{name} must be > 0, got {value!r}")
        latency = self.link_latency_ms
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or latency < 0:
            raise InvalidArgument(f"link_latency_ms must be >= 0, got {latency!r}")
        if type(self.max_log_entries) is not int or self.max_log_entries < 1:
            raise InvalidArgument(f"max_log_entries must be an int >= 1, got "
                                  f"{self.max_log_entries!r}")
        if self.seed is not None and type(self.seed) is not int:
            raise InvalidArgument(f"seed must be an int or None, got {self.seed!r}")
        if not isinstance(self.deterministic, bool):
            raise InvalidArgument(f"deterministic must be a bool, got {self.deterministic!r}")
        if not isinstance(self.engine, engine.Options):
            raise InvalidArgument("engine must be an engine.Options")
        self.engine.validate()
        return self

    @classmethod
    def from_settings(cls, base: ClusterOptions | None = None, **settings: Any
                      ) -> ClusterOptions:
        """``base`` (default: the defaults) with ``settings`` replaced, validated."""
        known = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for name, value in settings.items():
            if name in _LEGACY:
                new, convert = _LEGACY[name]
                warnings.warn(f"cluster setting {name!r} is deprecated: use {new!r}",
                              DeprecationWarning, stacklevel=3)
                name, value = new, convert(value)
            elif name not in known:
                raise InvalidArgument(f"unknown cluster setting {name!r}; the settings are "
                                      f"{', '.join(sorted(known))}")
            if name == "engine":
                value = _engine_options(value)
            changes[name] = value
        return dataclasses.replace(base or cls(), **changes).validate()
