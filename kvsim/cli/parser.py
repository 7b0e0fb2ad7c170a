"""The command line's parser class and its one-line errors: kept apart from the flag groups of
:mod:`kvsim.cli.args` (which load the models' specs, and numpy with them) so that a command
that needs neither, such as ``kvsim replay``, starts without them."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping

__all__ = ["Parser", "UsageError", "check_finite"]


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; one line is enough
        raise UsageError(message)


def check_finite(values: Mapping) -> None:
    """Every number given is finite: NaN and infinities are refused by the flag's name."""
    for dest, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{dest.replace('_', '-')} must be a finite number (got {value})")
