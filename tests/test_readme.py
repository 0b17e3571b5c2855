"""The README's embedding example runs verbatim, so it cannot rot."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _block_after(marker: str, lang: str) -> str:
    text = README.read_text()
    m = re.search(re.escape(marker) + r"\s*```" + lang + r"\n(.*?)```", text, re.S)
    assert m, f"no ```{lang} block after {marker} in README.md"
    return m.group(1)


def _run_example(marker: str, where: Path) -> str:
    """Execute the python block after ``marker`` in directory ``where``; return its output."""
    code = _block_after(marker, "python")
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(where)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {})
    finally:
        os.chdir(cwd)
    return out.getvalue().strip()


def test_embedding_example_runs(tmp_path: Path) -> None:
    """Execute the engine example in a scratch directory and check what it prints."""
    printed = _run_example("<!-- example -->", tmp_path)
    assert printed == "[(b'banana', b'yellow'), (b'cherry', b'yellow!')]"
    assert (tmp_path / "demo-db" / "CURRENT").exists()


def test_replicated_example_runs(tmp_path: Path) -> None:
    """Execute the replicated example: it survives the leader crash and prints hello."""
    assert _run_example("<!-- example-replicated -->", tmp_path) == "hello"
    assert (tmp_path / "demo-cluster" / "CLUSTER").exists()


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run extracts the README's test command instead of keeping a second copy."""
    cmd = _block_after("<!-- test-command -->", "sh").strip()
    assert "pytest" in cmd
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci
