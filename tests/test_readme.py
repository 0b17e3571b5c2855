"""The README's examples and commands run (or at least parse) as written, so they cannot rot."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import engine

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


def _sh_commands(block: str) -> list[str]:
    """The command lines of a ```sh block, without comments."""
    out = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _python(cmd: str) -> str:
    """``python -m ...`` run by this test's interpreter, with the project on its path."""
    assert cmd.startswith("python -m "), cmd
    return f"{shlex.quote(sys.executable)} {cmd[len('python '):]}"


def test_inspection_commands_run_against_the_example_stores(tmp_path: Path) -> None:
    """Every command of "Inspecting a store" runs as written, after the two examples, exit 0.

    The old README named ``demo-db/000001.log`` (gone after a reopen) and an
    ``other-db`` that did not exist; running the lines keeps them true.
    """
    _run_example("<!-- example -->", tmp_path)
    _run_example("<!-- example-replicated -->", tmp_path)
    with engine.open(str(tmp_path / "demo-db")) as db:  # a reopen: the WAL number moves on
        db.put(b"durian", b"green")
    commands = _sh_commands(_block_after("<!-- inspect-commands -->", "sh"))
    assert len(commands) >= 8
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(README.parent),
                                                      env.get("PYTHONPATH")]))
    outputs = {}
    for cmd in commands:
        r = subprocess.run(_python(cmd), shell=True, cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120, check=False, executable="/bin/bash")
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        assert r.stdout.strip(), cmd
        outputs[cmd.split("  ")[0]] = r.stdout
    assert outputs["python -m engine get demo-db banana"] == "yellow\n"
    assert "banana : yellow" in outputs["python -m engine scan demo-db a c"]


def _bench_args(cmd: str) -> list[str]:
    return shlex.split(cmd)[3:]  # after "python -m bench"


def test_every_other_readme_command_parses(tmp_path: Path, monkeypatch: Any) -> None:
    """Commands the test suite cannot afford to run whole still name real options.

    ``python -m bench ...`` lines go through the benchmark's argument parser,
    ``bench crash`` through its main with the torture loop replaced, the
    simulator runs for 50 steps, pytest collects the micro-benchmarks.
    """
    from bench import cli, crash, systems

    text = README.read_text()
    lines = [line.split("  #", 1)[0].strip() for block in
             re.findall(r"```sh\n(.*?)```", text, re.S) for line in block.splitlines()]
    lines += re.findall(r"`(python -m [^`]+)`", text)
    lines = [x.split("&& ")[-1] for x in lines if "python -m" in x]
    lines = [x[x.index("python -m"):].replace(".venv/bin/python", "python") for x in lines]
    seen = set()
    monkeypatch.setattr(crash, "run_engine", lambda path, **kw: crash.Tally(kills=1))
    # "--systems stratakv,etcd" names a real system whether or not etcd is installed here.
    monkeypatch.setattr(systems, "on_path", lambda binary: True)
    for cmd in lines:
        words = shlex.split(cmd)
        tool = words[2]
        seen.add(tool)
        if tool == "bench" and len(words) > 3 and words[3] == "crash":
            assert crash.main([*words[4:], "--dir", str(tmp_path)]) == 0, cmd
        elif tool == "bench" and len(words) > 3 and words[3] == "nemesis":
            from bench.nemesis.run import parse_args as nemesis_args

            nemesis_args(words[4:])
        elif tool == "bench" and len(words) > 3 and words[3] == "txn":
            r = subprocess.run([sys.executable, "-m", *words[2:], "--help"],
                               capture_output=True, text=True, timeout=120, check=False,
                               cwd=README.parent)
            assert r.returncode == 0, (cmd, r.stderr)
        elif tool == "bench":
            if words[3:] and words[3] == "--keys":  # "--keys N": the placeholder of a size
                words[4] = "1000"
            cli.parse_args(words[3:])
        elif tool == "replication.sim":
            if "--steps" not in words:
                words += ["--steps", "50"]
            words[words.index("--steps") + 1] = "50"
            r = subprocess.run([sys.executable, "-m", *words[2:]], capture_output=True,
                               text=True, timeout=120, check=False, cwd=README.parent)
            assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        elif tool == "pytest":
            r = subprocess.run([sys.executable, "-m", *words[2:], "--collect-only", "-q"],
                               capture_output=True, text=True, timeout=120, check=False,
                               cwd=README.parent)
            assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
        elif tool in ("engine", "replication"):
            continue  # run by test_inspection_commands_run_against_the_example_stores
        else:
            raise AssertionError(f"README command not covered by a test: {cmd}")
    assert {"bench", "replication.sim", "pytest", "engine"} <= seen


def test_performance_table_units_match_the_workloads() -> None:
    """The README's table and the benchmark agree on units (fillbatch100 once did not)."""
    from bench.workloads import WORKLOADS

    rows = re.findall(r"^\| (\w+): [^|]*\| ([^|]+) \|", README.read_text(), re.M)
    checked = 0
    for name, figure in rows:
        if name in WORKLOADS:
            unit = "keys/s" if figure.strip().endswith("keys/s") else "ops/s"
            assert WORKLOADS[name].unit == unit, (name, figure, WORKLOADS[name].unit)
            checked += 1
    assert checked >= 8


def test_no_references_to_documents_outside_the_repository() -> None:
    """The project stands on its own: no "the task", "the brief", or a DESIGN.md it lacks."""
    root = README.parent
    files = [root / "README.md", *root.glob("docs/*.md"), *root.glob("engine/*.py"),
             *root.glob("bench/*.py")]
    for path in files:
        text = path.read_text()
        for phrase in ("the task", "the mission", "the brief", "DESIGN.md"):
            assert phrase not in text, f"{path.relative_to(root)} mentions {phrase!r}"
    assert (root / "docs" / "ARCHITECTURE.md").exists()


def test_format_md_worked_examples_match_the_encoders() -> None:
    """FORMAT.md's byte examples are what the code writes (the header once said version 1)."""
    from engine.encoding import FORMAT_VERSION, FileKind
    from engine.record import file_header
    from engine.wal import encode_group
    from replication.command import encode_command
    from replication.node_log import _ENTRY, _HEADER, _MAGIC, ENTRY
    from replication.node_log import FORMAT_VERSION as RLOG_VERSION

    text = (README.parent / "docs" / "FORMAT.md").read_text()
    assert f"Format version: **{FORMAT_VERSION}**" in text

    def hex_of(marker: str) -> bytes:
        m = re.search(re.escape(marker) + r"\s*`([0-9a-f ]+)`", text)
        assert m, marker
        return bytes.fromhex(m.group(1))

    assert hex_of("WAL segment 7 is the 22-byte payload") == file_header(FileKind.WAL, 7)
    put = re.search(r"sequence 5 is the record\s+payload (.*?)\.\n", text, re.S)
    assert put
    assert bytes.fromhex("".join(re.findall(r"`([0-9a-f ]+)`", put.group(1)))) == \
        encode_group([(5, {b"k": b"v"})])
    header = re.search(r"header of node 0's segment is `([0-9a-f \n]+)`", text)
    assert header
    assert bytes.fromhex(header.group(1).replace("\n", " ")) == \
        _HEADER.pack(_MAGIC, RLOG_VERSION, 0)
    block = re.search(r"is the record\n\n```\n(.*?)```", text, re.S)
    assert block
    raw = b""
    for line in block.group(1).splitlines():
        code = line.split("  ")[0]
        for word in code.split():
            raw += word.strip('"').encode() if word.startswith('"') else bytes.fromhex(word)
    assert raw == _ENTRY.pack(ENTRY, 2, 1) + encode_command(bytes(16), {b"greeting": b"hello"})
