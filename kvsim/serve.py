"""``kvsim serve``'s HTTP server: the calculator page (``kvsim/web/``) and its JSON API.

Standard library only (``http.server.ThreadingHTTPServer``); the page is plain HTML, CSS and
JavaScript with hand-drawn SVG charts: no CDN, no outside asset (the responses carry a
Content-Security-Policy that forbids any). What each endpoint answers is computed in
``kvsim.page`` and, for the serving figures (``/api/serving``, ``/api/simulate-load``,
``/api/simulate-plan``), ``kvsim.page_serving`` (their docstrings list them, and how each one's work is bounded in time);
this module checks requests, routes them and writes answers.

Which Host it answers (DNS rebinding). A web page from anywhere can make the browser send
requests to a name its owner controls and then re-point that name at 127.0.0.1: the requests
reach this server with the attacker's name in the Host header. So a request whose Host is not
one of this server's own names gets 403 (JSON under /api/, plain text elsewhere), and so does an
HTTP/1.1 request without a Host (HTTP/1.0 ones may omit it). A name is allowed with this
server's port or without a port (any other port: 403). The names allowed:

* always ``localhost``, ``127.0.0.1`` and ``[::1]``, and the address the server listens on (the
  ``--host`` given, and what it resolved to);
* listening on another address than loopback (a LAN address, or ``0.0.0.0`` / ``::`` for all of
  them): also this machine's own names (``socket.gethostname()`` and ``socket.getfqdn()``);
* listening on all addresses: also any IP address (a rebinding page needs a name to re-point, so
  an address typed into the browser is safe; the machine's addresses need not be listed);
* the names given with ``--allow-host NAME`` (``make_server(allow_hosts=...)``): another DNS name
  of the machine, or a reverse proxy's.

Request limits. http.server's own: a request line of at most 64 KiB (longer: 414), at most 100
header lines of at most 64 KiB each (more, or longer: 431), a malformed request line 400. Ours: a
body of at most MAX_BODY (64 KiB; a larger Content-Length: 413 at once, the body never read), a
Content-Length that is not a whole number 400, a chunked body 411 (give a Content-Length), a
connection silent for TIMEOUT_S mid-request closed (408 if it stopped inside the body). Every
such refusal closes the connection (the rest of what the client sent is never read as a next
request), and the server goes on answering the others.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from kvsim.cli.args import DEFAULT_PORT, UsageError
from kvsim.page import (FieldError, SimulationJob, advice_response, calc, curve_response, error_field,
                        presets_response, sensitivity_response)
from kvsim.page_serving import serving_response, start_load_simulation, start_plan_simulation

WEB = Path(__file__).with_name("web")
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
JOBS = {"/api/simulate": SimulationJob.start, "/api/simulate-load": start_load_simulation,
        "/api/simulate-plan": start_plan_simulation}
MAX_BODY = 64 * 1024
TIMEOUT_S = 60  # a connection silent this long while the server waits for a request (or its body) is closed
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


# ----------------------------------------------------------------------------- Host names


def host_form(address: str) -> str:
    """An address or name as it appears in a Host header: lower case, IPv6 in brackets."""
    address = address.strip().lower()
    if ":" in address and not address.startswith("["):
        return f"[{address}]"
    return address


def split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port or None) of a Host header value; None when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        name, _, port = value.partition(":")
        if ":" in port:
            return None
        port = port if _ else None
    if not name or (port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5)):
        return None
    return name, int(port) if port is not None else None


def is_ip_literal(name: str) -> bool:
    """Whether a Host name is an IP address (IPv6 in brackets)."""
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1].split("%", 1)[0]
        try:
            return ipaddress.ip_address(name).version == 6
        except ValueError:
            return False
    try:
        return ipaddress.ip_address(name).version == 4
    except ValueError:
        return False


def check_allowed_name(name: str) -> str:
    """A name for ``--allow-host``, in Host form; ValueError if it is not a host name or address."""
    form = host_form(name)
    plain = form[1:-1] if form.startswith("[") else form
    if is_ip_literal(form) or (plain and all(c.isalnum() or c in "-._" for c in plain) and form == plain):
        return form
    raise ValueError(f"allow-host: {name!r} is not a host name or an IP address (give it without a port)")


# ----------------------------------------------------------------------------- HTTP


def _clean(value):
    """JSON-safe: non-finite floats become None, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


class Handler(BaseHTTPRequestHandler):
    server: KvsimServer
    server_version = "kvsim"
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT_S
    path = ""

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    # -- responses

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        if close:  # also sets close_connection: the rest of what the client sent is never read
            self.send_header("Connection", "close")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload) -> None:
        body = json.dumps(_clean(payload), allow_nan=False).encode()
        self._send(status, body, "application/json")

    def _error(self, status: int, message: str, close: bool = False) -> None:
        """An error: JSON (``{"error", "field": null, "errors": {}}``) under /api/, plain text elsewhere."""
        if urlsplit(self.path or "").path.startswith("/api/"):
            body = json.dumps({"error": message, "field": None, "errors": {}}).encode()
            self._send(status, body, "application/json", close=close)
        else:
            self._send(status, f"{status} {HTTPStatus(status).phrase}: {message}\n".encode(),
                       "text/plain; charset=utf-8", close=close)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, one too long, too many or too
        long header lines, an unsupported method) in our format; the connection is closed."""
        self.log_error("code %d, message %s", code, message)
        if self.request_version == "HTTP/0.9":  # a request line it could not read: answer with a status line
            self.request_version = "HTTP/1.0"
        self._error(int(code), message or HTTPStatus(code).phrase, close=True)

    def handle_expect_100(self):
        """``Expect: 100-continue``: refuse a body we would refuse before the client sends it."""
        if self._refuse_length():
            return False
        return super().handle_expect_100()

    def _bad_input(self, e: Exception) -> None:
        message = str(e)
        field = getattr(e, "field", None) or error_field(message)
        payload = {"error": message, "field": field, "errors": {field: message} if field else {}}
        self._json(400, payload)

    # -- routing

    def _refuse_host(self) -> bool:
        """403 (and True) unless the Host header is one of this server's names."""
        host = self.headers.get("Host")
        why = self.server.host_refusal(host, self.request_version)
        if why is None:
            return False
        self.log_error("refused Host %r: %s", host, why)
        self._error(403, why, close=True)
        return True

    def _refuse_length(self) -> bool:
        """Answer (and True) a body we do not read: chunked, a bad Content-Length, too large."""
        if self.headers.get("Transfer-Encoding") is not None:
            self._error(411, "send the request body with a Content-Length (no Transfer-Encoding)", close=True)
            return True
        lengths = self.headers.get_all("Content-Length") or []
        if len(set(lengths)) > 1:
            self._error(400, "more than one Content-Length", close=True)
            return True
        if not lengths:
            return False
        text = lengths[0].strip()
        if not (text.isascii() and text.isdigit()):
            self._error(400, f"Content-Length must be a whole number of bytes (got {lengths[0][:40]!r})", close=True)
            return True
        if int(text) > MAX_BODY:
            self._error(413, f"request body too large: {int(text):,} bytes (at most {MAX_BODY:,})", close=True)
            return True
        return False

    def _read_body(self) -> bytes | None:
        """The request body (b"" if none), or None when it was refused (answered, connection closed)."""
        if self._refuse_length():
            return None
        length = int(self.headers.get("Content-Length", "0").strip() or 0)
        if not length:
            return b""
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            self._error(408, f"the request body did not arrive within {TIMEOUT_S} s", close=True)
            return None
        if len(raw) < length:
            self.close_connection = True  # the client closed the connection mid-body: nobody to answer
            return None
        return raw

    def _params(self, query: str, raw: bytes) -> dict:
        if self.command == "POST":
            if not raw.strip():
                return {}
            try:
                params = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise FieldError("", f"the request body must be a JSON object ({e})") from None
            if not isinstance(params, dict):
                raise FieldError("", "the request body must be a JSON object of the calc flags")
            return params
        return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def _handle(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if self._refuse_host():
            return
        raw = self._read_body()
        if raw is None:
            return
        try:
            if self.command in ("GET", "HEAD") and path in STATIC:
                name, ctype = STATIC[path]
                self._send(200, (WEB / name).read_bytes(), ctype)
                return
            if path == "/api/presets" and self.command in ("GET", "HEAD"):
                self._json(200, presets_response())
                return
            if path in JOBS:  # one job at a time: each path starts its kind, all report the job
                if self.command == "POST":
                    status, body = JOBS[path](self.server.job, self._params(url.query, raw))
                    self._json(status, body)
                else:
                    self._json(200, self.server.job.status())
                return
            handlers = {"/api/calc": calc, "/api/curve": curve_response, "/api/sensitivity": sensitivity_response,
                        "/api/advice": advice_response, "/api/serving": serving_response}
            if path in handlers:
                self._json(200, handlers[path](self._params(url.query, raw)))
                return
            if path.startswith("/api/"):
                self._json(404, {"error": f"no such endpoint: {path}"})
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")
        except (FieldError, UsageError, ValueError) as e:
            self._bad_input(e)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug: say so in JSON (the page shows it), keep serving
            traceback.print_exc()
            self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._handle()

    def do_HEAD(self):  # noqa: N802
        self._handle()

    def do_POST(self):  # noqa: N802
        self._handle()


class KvsimServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, verbose: bool = False, allow_hosts=()):
        # before binding: a bind that fails calls server_close on the half-built server
        self.verbose = verbose
        self.job = SimulationJob()
        self.listen_host = address[0]
        extra = [check_allowed_name(n) for n in allow_hosts]
        super().__init__(address, Handler)
        self.port = self.server_address[1]
        self.wildcard = self.listen_host.strip() in WILDCARD_ADDRESSES
        names = {*LOOPBACK_NAMES, host_form(self.server_address[0]), *extra}
        if self.listen_host.strip():
            names.add(host_form(self.listen_host))
        if self.wildcard or not ipaddress.ip_address(self.server_address[0].split("%", 1)[0]).is_loopback:
            names |= {host_form(n) for n in (socket.gethostname(), socket.getfqdn()) if n}
        self.allowed_hosts = frozenset(names)

    def host_refusal(self, value: str | None, version: str = "HTTP/1.1") -> str | None:
        """Why a request with this Host header is refused (None: it is answered); see the module doc."""
        if value is None:
            return None if version == "HTTP/1.0" else "a Host header is required"
        parsed = split_host(value)
        if parsed is None:
            return f"Host {value[:100]!r} is not a host name"
        name, port = parsed
        if port is not None and port != self.port:
            return f"Host {value[:100]!r}: this server listens on port {self.port}"
        if name in self.allowed_hosts or (self.wildcard and is_ip_literal(name)):
            return None
        return (f"Host {value[:100]!r} is not a name of this server (a DNS rebinding?); "
                f"kvsim serve --allow-host NAME allows another")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if self.wildcard:  # all addresses: this machine's loopback one, for a browser here
            host = "::1" if self.address_family == socket.AF_INET6 else "127.0.0.1"
        return f"http://{host_form(host)}:{port}/"

    def server_close(self) -> None:
        self.job.cancel()
        super().server_close()


class KvsimServer6(KvsimServer):
    address_family = socket.AF_INET6


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, verbose: bool = False,
                allow_hosts=()) -> KvsimServer:
    """A server bound to ``host:port`` (port 0: any free port; see ``.url``), not yet serving.
    ``host`` may be an IPv6 address (``::1``, ``::``); ``allow_hosts``: more names the Host
    header may give (see the module doc). A host that does not resolve, or an address that is not
    this machine's, raises OSError (``socket.gaierror``, EADDRNOTAVAIL)."""
    host = host.strip()
    cls = KvsimServer6 if ":" in host.strip("[]") else KvsimServer
    return cls((host.strip("[]"), port), verbose=verbose, allow_hosts=allow_hosts)
