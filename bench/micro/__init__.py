"""Micro-benchmarks of the engine's hot paths, run by pytest-benchmark.

What is measured (one benchmark per hot path, grouped by component; every
benchmark's docstring says what it times and why it matters): memtable insert
and lookup, block encode/decode/get, bloom hash/build/probe, log framing
(``LogWriter.add_record``, ``read_log``), WAL group and batch codecs, lz4 on
a 4 KiB block, ``Table.get`` with and without the block cache, a merged scan,
the SSI certifier, and ``Engine.put``/``Engine.get`` on a MemFS. Sizes are in
``bench/micro/bench_hotpaths.py``; the whole suite takes about 30 seconds.

Run it from the repository root (needs the ``test`` extra, i.e.
pytest-benchmark)::

    python -m pytest bench/micro -p no:cacheprovider --benchmark-enable --benchmark-only \\
        --benchmark-sort=name

``--benchmark-enable`` overrides the ``--benchmark-disable`` in pyproject's
pytest ``addopts`` (without it pytest-benchmark refuses ``--benchmark-only``).
The default ``pytest`` run never sees these files: its ``testpaths`` is
``tests``, and the benchmark modules are named ``bench_*.py``, which only
``bench/micro/conftest.py`` tells pytest to collect.

Compare against a saved run (runs are kept in ``.benchmarks/<machine>/``,
which git ignores)::

    # 1. save a baseline, e.g. on the main branch
    python -m pytest bench/micro -p no:cacheprovider --benchmark-enable --benchmark-only \\
        --benchmark-sort=name --benchmark-autosave
    # 2. after a change: compare with the latest saved run (or --benchmark-compare=0001),
    #    failing if any median got more than 10% slower
    python -m pytest bench/micro -p no:cacheprovider --benchmark-enable --benchmark-only \\
        --benchmark-sort=name --benchmark-compare --benchmark-compare-fail=median:10%
    # or compare two saved runs without re-running anything
    pytest-benchmark compare 0001 0002 --sort=name --columns=mean,median,ops

Numbers are only comparable on the same machine and Python build; look at
medians, and rerun before believing a difference under ~5%.
"""
