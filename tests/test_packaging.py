"""Packaging: the version, the licence, the ``stratakv`` console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import engine
import replication
from bench import console

ROOT = Path(__file__).resolve().parent.parent


def test_version_comes_from_the_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert engine.__version__ == metadata.version("stratakv") == pyproject["project"]["version"]
    assert replication.__version__ == engine.__version__

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert engine._version() == "0+unknown"  # running from a source tree, not installed


def test_license_file_is_the_apache_license_pyproject_names() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert pyproject["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub
    assert text.count("\n") > 170


def test_console_script_is_declared_and_installed() -> None:
    scripts = metadata.entry_points(group="console_scripts")
    (ep,) = [e for e in scripts if e.name == "stratakv"]
    assert ep.value == "bench.console:main"
    exe = shutil.which("stratakv", path=os.path.dirname(sys.executable)) or \
        shutil.which("stratakv")
    if exe is None:
        pytest.skip("stratakv is declared but not installed in this environment")
    r = subprocess.run([exe, "inspect", "--help"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0 and "dump-wal" in r.stdout


@pytest.mark.parametrize(("args", "expect"), [
    (["inspect", "--help"], "dump-manifest"),
    (["cluster", "--help"], "dump-rlog"),
    (["sim", "--help"], "--steps"),
    (["bench", "--list"], "fillsync1"),
    (["crash", "--help"], "--kill-interval"),
    (["txn", "--help"], "OCC"),
])
def test_each_subcommand_reaches_its_tool(args: list[str], expect: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = console.main(args)
    except SystemExit as exc:  # argparse's --help
        status = int(exc.code or 0)
    assert status == 0
    assert expect in capsys.readouterr().out


def test_console_passes_exit_status_and_usage_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with engine.open(str(tmp_path / "db")) as db:
        db.put(b"k", b"v")
    assert console.main(["inspect", "get", str(tmp_path / "db"), "k"]) == 0
    assert capsys.readouterr().out == "v\n"
    assert console.main(["inspect", "get", str(tmp_path / "db"), "absent"]) == 1
    assert console.main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err
    assert console.main([]) == 2
    assert console.main(["--version"]) == 0
    assert capsys.readouterr().out == f"stratakv {engine.__version__}\n"
