"""``kvsim``: the parser of every command, and the dispatch.

Bad input gets one line on stderr naming the flag and what is allowed, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from importlib import import_module

from kvsim.cli.parser import Parser, UsageError, check_finite, flag_names

# Each command: its module, the function there that adds its flags, its one-line help. A command's
# module (and what it imports) is loaded only when that command is run or its flags are asked for.
COMMANDS = {
    "calc": ("calc", "configure", "sizing and the analytic hit-rate models"),
    "simulate": ("simulate", "configure", "discrete-event simulation through a block-level prefix cache"),
    "compare": ("compare", "configure", "models and simulation side by side (the main job)"),
    "plan": ("plan", "configure", "memory needed for a target hit rate (inverts the LRU model)"),
    "replay": ("replay", "configure_replay_parser", "replay real traces through the prefix cache"),
    "export-trace": ("replay", "configure_export_parser", "write a trace's block accesses for libCacheSim"),
    "sweep": ("sweep", "configure", "run calc, simulate, replay or plan over a grid of flags"),
    "sensitivity": ("sensitivity", "configure", "each input moved +/-50%%: effect on the token hit rate (tornado)"),
    "serve": ("serve", "configure", "the interactive calculator page, on a local web server"),
    "presets": ("presets", "configure", "list model and GPU presets"),
    "calibrate": ("calibrate", "configure", "fit the linear step time to your vLLM benchmark measurements"),
}


class _Version(argparse.Action):
    """``--version``: reads the installed package's metadata only when asked (importlib.metadata
    costs 50 ms of every start-up otherwise)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from importlib.metadata import version

        print(f"kvsim {version('kvsim')}")
        parser.exit()


def build_parser(commands: Iterable[str] | None = None) -> Parser:
    """The parser, with the flags of ``commands`` (default: all of them); the other commands are
    listed, with their help, but take no flags."""
    configured = set(COMMANDS if commands is None else commands)
    p = Parser(prog="kvsim", description="Prefix-cache hit rates of LLM serving: models and simulation.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, configure, help) in COMMANDS.items():
        parser = sub.add_parser(name, help=help)
        if name in configured:
            getattr(import_module(f"kvsim.cli.{module}"), configure)(parser)
    return p


def command_of(argv: list[str]) -> list[str]:
    """The command ``argv`` names: its first word that is not an option (kvsim's own options take
    no value), as a list of none or one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return [word] if word in COMMANDS else []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(command_of(argv))
        args = parser.parse_args(argv)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        check_finite(vars(args), flag_names(sub.choices[args.command]))
        return args.func(args)
    except (UsageError, ValueError) as e:
        print(f"kvsim: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (kvsim ... | head): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush goes nowhere, silently
        return 141
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"kvsim: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
