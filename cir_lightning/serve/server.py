"""``make_server``: ``SearchApp`` behind Python's ``ThreadingHTTPServer``, bound to localhost by default."""

from __future__ import annotations

import errno
import socket
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cir_lightning.errors import CIRConfigError
from cir_lightning.messages import os_reason
from cir_lightning.serve.app import MAX_BODY, Response, SearchApp

LOOPBACK = {"localhost", "127.0.0.1", "::1"}
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"
"""Content-Security-Policy of every answer: the page loads nothing from anywhere else."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck browser connection never keeps the command from stopping

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # the browser went away (a reload, a closed tab) mid-request: nothing of ours failed
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "cir-lightning"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(b"")

    def do_POST(self) -> None:  # noqa: N802
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit() or int(length) > MAX_BODY:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._send(Response.json({"error": f"the request must have a Content-Length of at most "
                                               f"{MAX_BODY // 2**20} MiB"}, 413 if length.isdigit() else 400))
            return
        self._answer(self.rfile.read(int(length)))

    def _answer(self, body: bytes) -> None:
        app = getattr(self.server, "app", None)
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if app is None:
            response = Response.json({"error": "the model is still loading; try again in a moment"}, 503)
        elif getattr(self.server, "loopback_only", False) and host not in LOOPBACK:
            response = Response.json({"error": "this server answers only to localhost"}, 403)
        else:
            try:
                response = app.respond(self.command, self.path, body, self.headers.get("Content-Type") or "")
            except Exception as err:  # a bug or a failing disk: the page gets one line, the console the trace
                traceback.print_exc()
                response = Response.json({"error": f"internal error: {type(err).__name__}: {err}"}, 500)
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", PAGE_POLICY)
        self.send_header("Cache-Control", "no-store" if "json" in response.content_type else "max-age=60")
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: the command prints its address once; refusals reach the page


def make_server(host: str = "127.0.0.1", port: int = 8765, app: SearchApp | None = None) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (port 0: any free one) answering with ``app`` (settable later, as
    ``server.app``; until then requests get a 503). Bound to a loopback address, it answers only requests
    addressed to localhost (a guard against DNS rebinding).

    Raises:
        CIRConfigError: the address cannot be used (port taken, no permission, unknown host), one line.

    Example:
        >>> from cir_lightning.serve import make_server
        >>> server = make_server("127.0.0.1", 0)
        >>> server.server_address[1] > 0
        True
        >>> server.server_close()
    """
    try:
        server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise CIRConfigError(f"`--port {port}`: {host}:{port} is already in use; choose another port "
                                 "(`--port 0` picks a free one)") from None
        raise CIRConfigError(f"`--host {host}` / `--port {port}`: cannot listen there: {os_reason(err)}") from None
    server.app = app  # type: ignore[attr-defined]
    server.loopback_only = host in LOOPBACK  # type: ignore[attr-defined]
    return server
