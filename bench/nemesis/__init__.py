"""``python -m bench nemesis``: a Jepsen-style run against real node processes on 127.0.0.1.

* :mod:`bench.nemesis.proxy` -- a fault-injecting TCP proxy, one listener
  per directed link, that cuts, delays and drops whole wire frames;
* :mod:`bench.nemesis.cluster` -- N ``serve`` processes wired through it;
* :mod:`bench.nemesis.faults` -- the seeded fault schedule (kill, pause,
  partition, bridge, one-way, slow, restart) and its timeline;
* :mod:`bench.nemesis.workload` -- client processes recording register and
  list-append histories;
* :mod:`bench.nemesis.check` -- the verdict: strict serializability,
  linearizability, no acknowledged write lost, identical replicas;
* :mod:`bench.nemesis.run` -- the command line.
"""
