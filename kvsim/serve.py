"""``kvsim serve``'s HTTP server: the calculator page (``kvsim/web/``) and its JSON API.

Standard library only (``http.server.ThreadingHTTPServer``); the page is plain HTML, CSS and
JavaScript with hand-drawn SVG charts: no CDN, no outside asset (the responses carry a
Content-Security-Policy that forbids any). What each endpoint answers is computed in
``kvsim.page`` (its docstring lists them); this module only routes requests and writes answers.
"""

from __future__ import annotations

import json
import math
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from kvsim.cli.args import UsageError
from kvsim.page import (FieldError, SimulationJob, advice_response, calc, curve_response, error_field,
                        presets_response, sensitivity_response)

WEB = Path(__file__).with_name("web")
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
DEFAULT_PORT = 8765
MAX_BODY = 64 * 1024


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

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    # -- responses

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
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

    def _bad_input(self, e: Exception) -> None:
        message = str(e)
        field = getattr(e, "field", None) or error_field(message)
        payload = {"error": message, "field": field, "errors": {field: message} if field else {}}
        self._json(400, payload)

    # -- routing

    def _params(self, query: str) -> dict:
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise FieldError("", f"request body too large (at most {MAX_BODY} bytes)")
            raw = self.rfile.read(length) if length else b""
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
        try:
            if self.command in ("GET", "HEAD") and path in STATIC:
                name, ctype = STATIC[path]
                self._send(200, (WEB / name).read_bytes(), ctype)
                return
            if path == "/api/presets" and self.command in ("GET", "HEAD"):
                self._json(200, presets_response())
                return
            if path == "/api/simulate":
                if self.command == "POST":
                    status, body = self.server.job.start(self._params(url.query))
                    self._json(status, body)
                else:
                    self._json(200, self.server.job.status())
                return
            handlers = {"/api/calc": calc, "/api/curve": curve_response, "/api/sensitivity": sensitivity_response,
                        "/api/advice": advice_response}
            if path in handlers:
                self._json(200, handlers[path](self._params(url.query)))
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

    def __init__(self, address, verbose: bool = False):
        super().__init__(address, Handler)
        self.verbose = verbose
        self.job = SimulationJob()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def server_close(self) -> None:
        self.job.cancel()
        super().server_close()


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, verbose: bool = False) -> KvsimServer:
    """A server bound to ``host:port`` (port 0: any free port; see ``.url``), not yet serving."""
    return KvsimServer((host, port), verbose=verbose)
