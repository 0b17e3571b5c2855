"""The golden-script runner itself (tests/datadriven.py): parsing, comparing, rewriting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.datadriven import Case, parse, run_file

SCRIPT = """\
# a comment
echo a b k=v
----
a b

upper
some input
----
SOME INPUT

blank
----
----
x

y
----
----
"""


def handler(case: Case) -> str:
    if case.command == "echo":
        return " ".join(case.positional())
    if case.command == "upper":
        return case.input.upper()
    if case.command == "blank":
        return "x\n\ny"
    raise ValueError(case.command)


def test_parse_cases_and_raw_lines() -> None:
    items = parse(SCRIPT, "s.txt")
    cases = [i for i in items if isinstance(i, Case)]
    assert [(c.command, c.line) for c in cases] == [("echo", 2), ("upper", 6), ("blank", 11)]
    assert cases[0].args == ["a", "b", "k=v"] and cases[0].kwargs == {"k": "v"}
    assert cases[1].input == "some input" and cases[1].expected == "SOME INPUT"
    assert cases[2].expected == "x\n\ny"
    assert items[0] == "# a comment"


def test_run_file_passes_and_reports_mismatches(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REWRITE", raising=False)
    path = tmp_path / "s.txt"
    path.write_text(SCRIPT)
    run_file(path, handler)
    path.write_text(SCRIPT.replace("SOME INPUT", "WRONG"))
    with pytest.raises(AssertionError, match=r"s.txt:6: output of 'upper' differs") as info:
        run_file(path, handler)
    assert "-WRONG" in str(info.value) and "+SOME INPUT" in str(info.value)


def test_rewrite_mode_restores_the_expected_outputs(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.txt"
    path.write_text(SCRIPT.replace("a b\n", "stale\n").replace("SOME INPUT\n", ""))
    monkeypatch.setenv("REWRITE", "1")
    run_file(path, handler)
    assert path.read_text() == SCRIPT


def test_malformed_scripts_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"s.txt:1: command without"):
        parse("echo a\n", "s.txt")
    with pytest.raises(ValueError, match="unterminated"):
        parse("blank\n----\n----\nx\n", "s.txt")


def test_handler_errors_name_the_position(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REWRITE", raising=False)
    path = tmp_path / "s.txt"
    path.write_text("nope\n----\n")
    with pytest.raises(AssertionError, match=r"s.txt:1: nope raised ValueError"):
        run_file(path, handler)
