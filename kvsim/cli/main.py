"""``kvsim``: the parser of every command, and the dispatch.

Bad input gets one line on stderr naming the flag and what is allowed, and exit status 2.
"""

from __future__ import annotations

import sys
from importlib.metadata import version

from kvsim.cli import calc, compare, plan, presets, sensitivity, serve, simulate, sweep
from kvsim.cli.args import Parser, UsageError, check_finite
from kvsim.cli.replay import configure_export_parser, configure_replay_parser


def build_parser() -> Parser:
    p = Parser(prog="kvsim", description="Prefix-cache hit rates of LLM serving: models and simulation.")
    p.add_argument("--version", action="version", version=f"kvsim {version('kvsim')}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    calc.configure(sub.add_parser("calc", help="sizing and the analytic hit-rate models"))
    simulate.configure(sub.add_parser("simulate", help="discrete-event simulation through a block-level prefix cache"))
    compare.configure(sub.add_parser("compare", help="models and simulation side by side (the main job)"))
    plan.configure(sub.add_parser("plan", help="memory needed for a target hit rate (inverts the LRU model)"))
    configure_replay_parser(sub.add_parser("replay", help="replay real traces through the prefix cache"))
    configure_export_parser(sub.add_parser("export-trace", help="write a trace's block accesses for libCacheSim"))
    sweep.configure(sub.add_parser("sweep", help="run calc, simulate, replay or plan over a grid of flags"))
    sensitivity.configure(sub.add_parser("sensitivity",
                                         help="each input moved +/-50%%: effect on the token hit rate (tornado)"))
    serve.configure(sub.add_parser("serve", help="the interactive calculator page, on a local web server"))
    presets.configure(sub.add_parser("presets", help="list model and GPU presets"))
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        check_finite(vars(args))
        return args.func(args)
    except (UsageError, ValueError) as e:
        print(f"kvsim: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"kvsim: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
