"""``kvsim serve``: the interactive calculator page on a local web server."""

from __future__ import annotations

import argparse
import errno
import socket

from kvsim.cli.args import DEFAULT_PORT, UsageError

DESCRIPTION = """\
The calculator page and its JSON API on http://127.0.0.1:8765/ (this machine only).

Only requests that name this server in their Host header are answered (others get 403: a web
page elsewhere cannot reach it through a DNS name re-pointed at this machine): localhost,
127.0.0.1, [::1] and the --host address, with the server's port or none. Listening on another
address (--host 192.168.1.20, or 0.0.0.0 for all) also allows this machine's own names
(hostname, fully qualified name); with 0.0.0.0 (or ::) any IP address too. --allow-host NAME
allows another name (a DNS name of the machine, a reverse proxy's). The page has no login:
listen beyond 127.0.0.1 on trusted networks only.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all addresses)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; no port)")
    p.add_argument("--open", action="store_true", help="also open the page in the default browser")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    p.set_defaults(func=cmd)


# A bind that fails with these is the address's fault; any other (in use, not allowed) the port's.
HOST_ERRNOS = {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL}


def cmd(a) -> int:
    from kvsim.page import calc  # the page's models (scipy): loaded to serve, not to print --help
    from kvsim.serve import check_allowed_name, make_server

    if not a.host.strip():  # "" would listen on every address: a slip, not a choice (0.0.0.0 says it)
        raise UsageError(f"host must name an address, e.g. 127.0.0.1 or 0.0.0.0 for all (got {a.host!r})")
    if not (0 <= a.port <= 65535):
        raise UsageError(f"port must be in 0..65535 (got {a.port})")
    try:
        allow = [check_allowed_name(n) for n in a.allow_host]
    except ValueError as e:
        raise UsageError(str(e)) from None
    where = f"[{a.host}]:{a.port}" if ":" in a.host else f"{a.host}:{a.port}"
    try:
        server = make_server(a.host, a.port, verbose=a.verbose, allow_hosts=allow)
    except (OSError, OverflowError) as e:
        what = "host" if isinstance(e, socket.gaierror) or getattr(e, "errno", None) in HOST_ERRNOS else "port"
        raise UsageError(f"{what}: cannot listen on {where}: {getattr(e, 'strerror', None) or e}") from None
    try:
        calc({}, curve=False)  # warm up (imports, caches) so that the first page load is as fast as the rest
        listening = " (listening on all addresses)" if server.wildcard else ""
        print(f"kvsim: serving the calculator on {server.url}{listening} (Ctrl-C to stop)", flush=True)
        if a.open:
            import webbrowser

            webbrowser.open(server.url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
