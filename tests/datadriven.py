"""A small golden-script runner in the spirit of cockroachdb/etcd's ``datadriven``.

A script is a sequence of cases separated by blank lines; ``#`` lines are
comments::

    command arg1 arg2 key=value
    optional input lines
    ----
    expected output
    (up to the next blank line)

    command-with-blank-lines-in-its-output
    ----
    ----
    output that may contain

    blank lines
    ----
    ----

``run_file(path, handler)`` calls ``handler(case)`` for each case in order
and compares what it returns with the expected output; a mismatch fails with
the file, line and a diff. With the environment variable ``REWRITE=1`` the
file is rewritten in place with the actual outputs instead (then read the
diff before committing it). Generic: nothing here knows about any handler.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Case", "parse", "rewrite_enabled", "run_file"]

SEPARATOR = "----"


@dataclass(slots=True)
class Case:
    """One command of a script and its expected output."""

    path: str
    line: int  # 1-based line of the command
    command: str
    args: list[str]
    input: str  # lines between the command and the separator
    expected: str
    kwargs: dict[str, str] = field(default_factory=dict)  # the key=value args

    @property
    def pos(self) -> str:
        return f"{self.path}:{self.line}"

    def positional(self) -> list[str]:
        """The args that are not key=value."""
        return [a for a in self.args if "=" not in a]


def rewrite_enabled() -> bool:
    return os.environ.get("REWRITE", "") not in ("", "0")


def parse(text: str, path: str = "<script>") -> list[Case | str]:
    """Split a script into cases and the raw lines (comments, blanks) between them."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    items: list[Case | str] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            items.append(line)
            i += 1
            continue
        start = i
        i += 1
        given: list[str] = []
        while i < n and lines[i] != SEPARATOR:
            if not lines[i].strip():
                raise ValueError(f"{path}:{start + 1}: command without a {SEPARATOR!r} line")
            given.append(lines[i])
            i += 1
        if i >= n:
            raise ValueError(f"{path}:{start + 1}: command without a {SEPARATOR!r} line")
        i += 1
        out: list[str] = []
        if i < n and lines[i] == SEPARATOR:  # a block that may hold blank lines
            i += 1
            while i + 1 < n and not (lines[i] == SEPARATOR and lines[i + 1] == SEPARATOR):
                out.append(lines[i])
                i += 1
            if i + 1 >= n:
                raise ValueError(f"{path}:{start + 1}: unterminated {SEPARATOR!r} block")
            i += 2
        else:
            while i < n and lines[i].strip():
                out.append(lines[i])
                i += 1
        words = line.split()
        kwargs = dict(a.split("=", 1) for a in words[1:] if "=" in a)
        items.append(Case(path, start + 1, words[0], words[1:], "\n".join(given),
                          "\n".join(out), kwargs))
    return items


def _render(case: Case, output: str) -> list[str]:
    head = [" ".join([case.command, *case.args])]
    if case.input:
        head += case.input.split("\n")
    body = output.split("\n") if output else []
    if any(not b.strip() for b in body):
        return [*head, SEPARATOR, SEPARATOR, *body, SEPARATOR, SEPARATOR]
    return [*head, SEPARATOR, *body]


def _normalize(output: str) -> str:
    return "\n".join(line.rstrip() for line in output.rstrip("\n").split("\n")).strip("\n")


def run_file(path: str | Path, handler: Callable[[Case], str]) -> None:
    """Run every case of the script at ``path`` through ``handler``; compare or rewrite."""
    p = Path(path)
    items = parse(p.read_text(), str(p))
    rewrite = rewrite_enabled()
    out_lines: list[str] = []
    for item in items:
        if isinstance(item, str):
            out_lines.append(item)
            continue
        try:
            actual = _normalize(handler(item))
        except Exception as exc:
            raise AssertionError(f"{item.pos}: {item.command} raised {exc!r}") from exc
        if rewrite:
            out_lines += _render(item, actual)
        elif actual != item.expected:
            diff = "\n".join(difflib.unified_diff(
                item.expected.split("\n"), actual.split("\n"), "expected", "actual",
                lineterm=""))
            raise AssertionError(f"{item.pos}: output of {item.command!r} differs "
                                 f"(REWRITE=1 to accept):\n{diff}")
    if rewrite:
        p.write_text("\n".join(out_lines) + "\n")
