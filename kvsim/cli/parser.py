"""The command line's parser class and its one-line errors: kept apart from the flag groups of
:mod:`kvsim.cli.args` (which load the models' specs, and numpy with them) so that a command
that needs neither, such as ``kvsim replay``, starts without them."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Parser", "UsageError", "check_finite", "nonnegative_int", "positive_float", "positive_int", "flag_names", "output_file", "output_folder"]


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; one line is enough
        raise UsageError(message)


def check_finite(values: Mapping, names: Mapping[str, str] | None = None) -> None:
    """Every number given is finite: NaN and infinities are refused by the flag's name (``names``:
    dest -> flag, from :func:`flag_names`, for flags whose dest differs; else the dest)."""
    for dest, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            name = (names or {}).get(dest) or dest.replace("_", "-")
            raise UsageError(f"{name} must be a finite number (got {value})")


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's dest -> its long flag without the dashes (cpu_gib -> cpu-offload-gib)."""
    return {a.dest: next((s[2:] for s in a.option_strings if s.startswith("--")), a.dest.replace("_", "-"))
            for a in parser._actions if a.option_strings}


def _writable_folder(flag: str, path: str, folder: Path) -> None:
    """``folder`` (an existing folder) takes new files: tried with a temporary file, which also
    catches what permission bits do not (a read-only file system, /proc, /sys, running as root)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{flag} must be in a folder kvsim can write (got {path!r}: {folder}: "
                         f"{e.strerror or e})") from None


def output_file(flag: str, path: str | os.PathLike | None, *, figure: bool = False) -> str | None:
    """The file an output flag (``--figure``, ``--out``, ``-o``, ``--requests-out``) will write,
    checked before any work: not empty, not a folder nor a device, in an existing folder that can
    be written. Returns the path actually written (print that one): a ``figure`` without an
    extension gets ``.png`` (matplotlib's convention), and its extension must be a format
    matplotlib writes. None (the flag not given) stays None."""
    if path is None:
        return None
    path = os.fspath(path)
    if not path.strip():
        raise UsageError(f"{flag} must be a file path (got {path!r})")
    if Path(path).is_dir():
        hint = f"; e.g. {Path(path) / 'figure.png'}" if figure else ""
        raise UsageError(f"{flag} must be a file path, not a folder (got {path!r}{hint})")
    if Path(path).exists() and not Path(path).is_file():
        raise UsageError(f"{flag} must be a regular file path (got {path!r}, which exists and is not one)")
    if figure:
        ext = os.path.splitext(path)[1]
        if not ext:
            path += ".png"
        else:
            from matplotlib.backend_bases import FigureCanvasBase  # only when a figure is asked for

            formats = FigureCanvasBase.get_supported_filetypes()
            if ext[1:].lower() not in formats:
                raise UsageError(f"{flag} must end in one of {', '.join('.' + f for f in sorted(formats))} "
                                 f"(got {path!r})")
    target = Path(path)
    if target.is_dir():  # a figure's name with .png added
        raise UsageError(f"{flag} must be a file path, not a folder (got {path!r})")
    if target.exists() and not target.is_file():
        raise UsageError(f"{flag} must be a regular file path (got {path!r}, which exists and is not one)")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} must be in an existing folder (got {path!r}: no folder {folder})")
    _writable_folder(flag, path, folder)
    return path


def output_folder(flag: str, path: str | os.PathLike | None) -> str | None:
    """The folder an output flag (``kvsim sweep --out``, the experiments' ``--out``) writes into,
    checked before any work: not empty, not an existing file, and creatable or writable (its
    nearest existing ancestor takes new files). Returns it (the caller creates it)."""
    if path is None:
        return None
    path = os.fspath(path)
    if not path.strip():
        raise UsageError(f"{flag} must be a folder path (got {path!r})")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} must be a folder (got {path!r}, which is a file)")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} must be a folder path (got {path!r}: {existing} is a file)")
    _writable_folder(flag, path, existing)
    return path


# argparse types of the commands that parse without the scenario's specs (replay, calibrate).

def _integer_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum} (got {text!r})")
        return value
    return parse


positive_int = _integer_at_least(1)
nonnegative_int = _integer_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number > 0 (got {text!r})")
    return value
