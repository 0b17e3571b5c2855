"""Collect the micro-benchmark modules (``bench_*.py``) when pytest is pointed at this folder.

pytest's default ``python_files`` (``test_*.py``) would skip them, which is
the point: the default test run (``testpaths = ["tests"]``) must never pick
up benchmarks. This hook only applies when ``bench/micro`` itself is
collected, because pytest loads a ``conftest.py`` only for the directories it
collects.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
