"""The README's examples run for a user who has only the project.

* Every command block that uses the shipped sample traces (``kvsim/samples/``), and ``kvsim
  --version``, is run in-process from the project folder and its output compared with the
  README's: exactly, except that a line ``...`` stands for any lines and timing lines are
  normalised.
* Every input path a README command names exists in the project (or is written by an earlier
  command of its block), and no command reads the shared traces (``../shared``) that a user
  does not have.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from kvsim.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Lines whose numbers are wall-clock timings: compared with the numbers blanked out.
TIMING = [re.compile(r"^(replayed in )[\d.,]+ s \([\d.,]+ requests/s\)$"),
          re.compile(r"^(.* in )[\d.]+ s$")]
# Flags whose value is a file or folder the command reads; other path-like flags are outputs.
INPUT_FLAGS = {"--conversations", "--trace"}
OUTPUT_FLAGS = {"--out", "-o", "--figure"}
INPUT_SUFFIXES = (".toml", ".jsonl", ".json", ".gz", ".csv")


def blocks() -> list[tuple[int, list[tuple[str, list[str]]]]]:
    """The README's fenced blocks that hold ``$ `` commands: (line number, [(command, output lines)])."""
    found, block, start, inside = [], [], 0, False
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            if inside and block:
                found.append((start, block))
            inside, block, start = not inside, [], number
        elif inside and line.startswith("$ "):
            block.append((line[2:], []))
        elif inside and block:
            block[-1][1].append(line)
    return found


def commands() -> list[tuple[int, str]]:
    """Every command the README tells a user to run: ``$ `` lines, and the lines of ``sh`` blocks."""
    found, inside, shell, start = [], False, False, 0
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            inside, shell, start = not inside, line.strip() == "```sh", number
        elif inside and line.startswith("$ "):
            found.append((start, line[2:]))
        elif inside and shell and line.strip() and not line.lstrip().startswith("#"):
            found.append((start, line))
    return found


def is_run(block: list[tuple[str, list[str]]]) -> bool:
    cmds = [c for c, _ in block]
    return all(c.startswith("kvsim ") for c in cmds) and (
        any("kvsim/samples/" in c for c in cmds) or cmds == ["kvsim --version"])


SAMPLE_BLOCKS = [(start, block) for start, block in blocks() if is_run(block)]


def normalise(line: str) -> str:
    line = line.rstrip()
    for pattern in TIMING:
        m = pattern.match(line)
        if m:
            return m.group(1) + "<time>"
    return line


def matches(expected: list[str], actual: list[str]) -> bool:
    """``expected`` equals ``actual`` line by line, a line ``...`` standing for any lines."""
    parts = []
    for line in expected:
        parts.append(r"(?:[^\n]*\n)*?" if line.strip() == "..." else re.escape(normalise(line)) + r"\n")
    text = "".join(normalise(line) + "\n" for line in actual)
    return re.fullmatch("".join(parts), text) is not None


def trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def run(capsys, command: str) -> list[str]:
    argv = shlex.split(command, comments=True)[1:]
    try:
        main(argv)
    except SystemExit:  # --version
        pass
    out, err = capsys.readouterr()
    return trim((out + err).splitlines())


def test_the_readme_has_sample_examples():
    cmds = [c for _, block in SAMPLE_BLOCKS for c, _ in block]
    assert "kvsim --version" in cmds
    assert any(c.startswith("kvsim replay kvsim/samples/") for c in cmds)
    assert any(c.startswith("kvsim calc --conversations kvsim/samples/agentic") for c in cmds)


@pytest.mark.parametrize("start,block", SAMPLE_BLOCKS, ids=[f"README.md:{s}" for s, _ in SAMPLE_BLOCKS])
def test_sample_example_output_is_the_readme(start, block, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    for command, expected in block:
        actual = run(capsys, command)
        assert matches(trim(expected), actual), (
            f"README.md block at line {start}: `{command}` printed\n" + "\n".join(actual))


def test_matches_elisions_and_timings():
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "d"], ["a", "d"])
    assert matches(["a", "..."], ["a", "b"])
    assert not matches(["a", "...", "d"], ["a", "b", "c"])
    assert not matches(["a", "b"], ["a", "c"])
    assert matches(["replayed in 0.29 s (1,715 requests/s)"], ["replayed in 0.07 s (7,429 requests/s)"])


def input_paths(command: str) -> list[str]:
    """The files and folders a command reads (kvsim's trace and grid arguments, scripts)."""
    words = shlex.split(command, comments=True)
    if words[:1] == ["kvsim"]:
        paths, flag = [], None  # flag: the option whose values follow
        for word in words[2:]:
            if word.startswith("-"):
                flag = word
                continue
            if flag in INPUT_FLAGS or (flag not in OUTPUT_FLAGS and ("/" in word or word.endswith(INPUT_SUFFIXES))):
                paths.append(word)
            if flag not in INPUT_FLAGS:  # those take several values (--conversations PATH...)
                flag = None
        return paths
    if len(words) > 1 and words[0].endswith("python") and words[1].endswith(".py"):
        return [words[1]]
    return []


def written_paths(command: str) -> list[str]:
    return re.findall(r">\s*(\S+)", command)


def test_readme_commands_read_only_what_the_project_has():
    commands_seen = commands()
    assert commands_seen
    created: set[str] = set()
    for start, command in commands_seen:
        assert "../shared" not in command, f"README.md block at line {start} reads the shared traces: {command}"
        assert "agentic-sample" not in command
        for path in input_paths(command):
            assert path in created or (ROOT / path).exists(), (
                f"README.md block at line {start}: `{command}` reads {path}, which the project does not have")
        created.update(written_paths(command))
