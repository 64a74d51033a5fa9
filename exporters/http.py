"""The metrics HTTP endpoint: ``/metrics`` and ``/healthz`` on their own threads.

Scrapes never run on the server's event loop: a ``ThreadingHTTPServer`` serves
each connection on its own thread, so a slow scrape (or a slow client) delays
no inference request. At most ``max_concurrent_scrapes`` scrapes collect at
once; more get 503 at once instead of piling up threads that all hold the GIL.

``/metrics`` speaks the Prometheus text format, or OpenMetrics when the
``Accept`` header asks for it, gzip-compressed when ``Accept-Encoding`` allows
(prometheus_client's ``choose_encoder`` and ``gzip_accepted`` decide), and
``?name[]=...`` restricts the output to some families. ``/healthz`` answers
``200 ok`` while the endpoint runs.

``MetricsHTTPServer`` has the server's ``Service`` shape (async ``start`` /
``stop``); ``port`` is the bound port, also when 0 asked for any free one.

The accept loop sleeps in ``select`` until a connection comes or ``stop``
wakes it through a socket pair: no polling interval, so an idle endpoint
costs no wake-ups (each would take the GIL from the event loop).

With ``tls`` (a callable returning the ``ssl.SSLContext`` to use now) every
connection is HTTPS: the context is asked for per connection, so certificates
rotated on disk apply to the next connection, and the handshake runs on the
connection's own thread (a slow or silent client cannot stall the accept loop).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import selectors
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

DEFAULT_PORT = 8002
#: Seconds a connection may sit idle before its thread gives up on it.
IDLE_TIMEOUT = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        max_concurrent: int,
        family: socket.AddressFamily,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.address_family = family
        self.registry = registry
        self.scrape_slots = threading.BoundedSemaphore(max_concurrent)
        self.tls = tls
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        """Accept; with TLS, wrap the socket (handshake later, on the handler's thread)."""
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
        try:
            wrapped = self.tls().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except Exception:
            sock.close()
            raise
        return wrapped, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed handshake or dropped connection is the client's problem: debug log only."""
        if isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError is an OSError
            log.debug("metrics connection from %s failed", client_address, exc_info=True)
        else:
            log.exception("metrics request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = IDLE_TIMEOUT
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        """Route a GET."""
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        """Route a HEAD (headers only)."""
        self._route(send_body=False)

    def _route(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        if url.path == "/metrics":
            self._metrics(parse_qs(url.query), send_body)
        elif url.path == "/healthz":
            self._reply(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8", send_body)
        else:
            self._reply(
                HTTPStatus.NOT_FOUND,
                b"not found: this server has /metrics and /healthz\n",
                "text/plain; charset=utf-8",
                send_body,
            )

    def _metrics(self, params: dict[str, list[str]], send_body: bool) -> None:
        slots = self.server.scrape_slots
        if not slots.acquire(blocking=False):
            self._reply(
                HTTPStatus.SERVICE_UNAVAILABLE,
                b"too many concurrent scrapes; retry\n",
                "text/plain; charset=utf-8",
                send_body,
            )
            return
        try:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            registry = self.server.registry
            names = params.get("name[]")
            body = encoder(registry.restricted_registry(names) if names else registry)
        finally:
            slots.release()
        headers = {}
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        self._reply(HTTPStatus.OK, body, content_type, send_body, headers)

    def _reply(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        send_body: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs go to debug: Prometheus scrapes every few seconds."""
        log.debug("%s " + format, self.address_string(), *args)


class MetricsHTTPServer:
    """Serves one registry over HTTP from a background thread (a server ``Service``)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "0.0.0.0",  # noqa: S104 - Prometheus scrapes from outside the pod
        port: int = DEFAULT_PORT,
        max_concurrent_scrapes: int = 4,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        if max_concurrent_scrapes < 1:
            raise ValueError("max_concurrent_scrapes must be at least 1")
        self._tls = tls
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._max_concurrent = max_concurrent_scrapes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wakeup: socket.socket | None = None  # written to by stop()

    @property
    def port(self) -> int:
        """The bound port (0 until started)."""
        return 0 if self._server is None else int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """The address it listens on."""
        return self._host

    @property
    def url(self) -> str:
        """``http(s)://host:port`` (loopback when listening on every address)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self._host, self._host)  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        """Bind the port and serve from a daemon thread; OSError when the port is taken."""
        if self._server is not None:
            return
        host = self._host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            server = _Server(
                (host, self._requested_port),
                self._registry,
                self._max_concurrent,
                family,
                self._tls,
            )
        except OSError as exc:
            where = f"{self._host}:{self._requested_port}"
            raise OSError(
                exc.errno, f"metrics endpoint cannot listen on {where}: {exc.strerror}"
            ) from exc
        self._server = server
        reader, self._wakeup = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve, args=(server, reader), name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info(
            "serving metrics on %s:%d (/metrics, /healthz%s)",
            self._host,
            self.port,
            ", HTTPS" if self._tls else "",
        )

    @staticmethod
    def _serve(server: _Server, wakeup: socket.socket) -> None:
        """Accept connections (each handled on its own thread) until ``wakeup`` is readable."""
        with wakeup, selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            selector.register(wakeup, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is wakeup for key, _ in ready):
                    return
                try:
                    server.handle_request()  # readable: accepts at once, hands it to a thread
                except Exception:  # keep accepting: one connection's failure is its own
                    log.exception("metrics endpoint: accepting a connection failed")

    async def stop(self) -> None:
        """Stop serving and close the port (waits off the event loop)."""
        server, thread, wakeup = self._server, self._thread, self._wakeup
        if server is None:
            return
        if wakeup is not None:
            wakeup.send(b"x")
            wakeup.close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
        server.server_close()
        self._server = None
        self._thread = None
        self._wakeup = None
