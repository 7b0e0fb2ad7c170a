"""``kvsim serve``: the interactive calculator page on a local web server."""

from __future__ import annotations

import argparse

from kvsim.cli.args import UsageError
from kvsim.page import calc
from kvsim.serve import DEFAULT_PORT, make_server


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--open", action="store_true", help="also open the page in the default browser")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    p.set_defaults(func=cmd)


def cmd(a) -> int:
    if not (0 <= a.port <= 65535):
        raise UsageError(f"port must be in 0..65535 (got {a.port})")
    try:
        server = make_server(a.host, a.port, verbose=a.verbose)
    except OSError as e:
        raise UsageError(f"port: cannot listen on {a.host}:{a.port}: {e.strerror or e}") from None
    calc({}, curve=False)  # warm up (imports, caches) so that the first page load is as fast as the rest
    print(f"kvsim: serving the calculator on {server.url} (Ctrl-C to stop)", flush=True)
    if a.open:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
