"""Cut the small sample traces shipped in ``kvsim/samples/`` from the shared public traces.

    python experiments/make_samples.py [--traces ../shared/traces] [--out kvsim/samples]

* ``mooncake-conversation-sample.jsonl.gz``: the first 500 lines (requests) of Mooncake's
  ``conversation_trace.jsonl``, unchanged, gzip-compressed (level 9, no name or time stamp in the
  header, so a rerun gives the same bytes).
* ``agentic/``: eight agentic-coding session files, copied byte for byte from the project's
  gzip-compressed copy (``trace_NNNN.json.gz``), or compressed as above from an upstream checkout
  (``trace_NNNN.json``; same content, the bytes may differ). They are short (at most 1.8 hours
  each, so a simulation reaches its steady state in a few hours of simulated time) and small
  (under 30 KB compressed), and two of them nest subagents.

``--traces DIR`` holds ``mooncake/conversation_trace.jsonl`` and ``agentic-coding/`` (the layout of
``experiments/traces.py``; the README shows how to download the two folders).

The README's sample examples and ``tests/test_readme.py`` depend on exactly these files.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

from kvsim.cli.parser import UsageError, output_folder

MOONCAKE_REQUESTS = 500
AGENTIC_FILES = ("trace_0001.json.gz", "trace_0006.json.gz", "trace_0011.json.gz", "trace_0013.json.gz",
                 "trace_0023.json.gz", "trace_0035.json.gz", "trace_0274.json.gz", "trace_0291.json.gz")


def write_gzip(path: Path, data: bytes) -> None:
    """Level 9, no file name or time stamp in the header: the same data give the same bytes."""
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "traces"
    ap.add_argument("--traces", type=Path, default=default, help=f"folder of the shared traces (default {default})")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "kvsim" / "samples"))
    args = ap.parse_args(argv)
    try:  # output paths checked before any work (kvsim.cli.parser)
        args.out = Path(output_folder("--out", args.out))
    except UsageError as e:
        print(f"make_samples: error: {e}", file=sys.stderr)
        return 2

    lines = []
    with open(args.traces / "mooncake" / "conversation_trace.jsonl", "rb") as f:
        for line in f:
            lines.append(line)
            if len(lines) == MOONCAKE_REQUESTS:
                break
    args.out.mkdir(parents=True, exist_ok=True)
    write_gzip(args.out / "mooncake-conversation-sample.jsonl.gz", b"".join(lines))

    (args.out / "agentic").mkdir(exist_ok=True)
    for name in AGENTIC_FILES:
        source = args.traces / "agentic-coding" / name
        if source.exists():
            shutil.copyfile(source, args.out / "agentic" / name)
        else:  # an upstream checkout: uncompressed
            write_gzip(args.out / "agentic" / name, source.with_suffix("").read_bytes())
    print(f"{args.out}: {len(lines)} Mooncake requests, {len(AGENTIC_FILES)} agentic-coding sessions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
