"""The dashboard's web server: two pages, their JSON endpoints and the static files.

One store is opened per server (``history.open_reader``, so a missing sqlite file is refused,
never created) and every request reads it in its own short read transaction: nothing is held
between requests and nothing is ever written. Pages are static HTML and JavaScript that poll
the JSON endpoints; the numbers in them come from ``data``.
"""

from __future__ import annotations

import html
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..experiment import ConfigError
from ..history import history_of, open_reader
from ..store import NotFound, SQLStore, StoreError
from . import data

STATIC = Path(__file__).with_name("static")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
HEADERS = [  # the pages load nothing from elsewhere and run no inline script
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class Headers:
    """Adds the security headers to every response (pages, JSON and static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Json(JSONResponse):
    """Strict JSON (a NaN would break the page's parser), never cached."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


def reply(content: Any, status: int = 200) -> Json:
    return Json(content, status_code=status, headers={"cache-control": "no-store"})


@cache
def template(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def page(name: str, title: str, experiment: str = "", status: int = 200) -> HTMLResponse:
    text = template(name).replace("{{title}}", html.escape(title)).replace("{{experiment}}", html.escape(experiment))
    return HTMLResponse(text, status_code=status, headers={"cache-control": "no-store"})


def create_app(store: SQLStore, allowed_hosts: list[str] | None = None) -> Starlette:
    """The dashboard of ``store``, which the caller opened and closes. ``allowed_hosts``:
    the Host names accepted (None: any), which stops a web page elsewhere from reading a
    dashboard on 127.0.0.1 through a rebound DNS name."""

    def experiment_list(request: Request) -> Response:
        return reply(data.experiments(history_of(store, e) for e in store.experiments()))

    def experiment_data(request: Request) -> Response:
        exp = store.experiment(request.path_params["name"])
        return reply(data.experiment(history_of(store, exp), store.events(exp.id, limit=data.RECENT_EVENTS)))

    def list_page(request: Request) -> Response:
        return page("index.html", "popbt dashboard")

    def experiment_page(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            exp = store.experiment(name)
        except NotFound as e:
            return page("missing.html", f"{_message(e)}", status=404)
        return page("experiment.html", exp.name, exp.name)

    async def not_found(request: Request, exc: Exception) -> Response:
        return reply({"error": _message(exc)}, status=404)

    async def unavailable(request: Request, exc: Exception) -> Response:
        return reply({"error": _message(exc)}, status=503)

    routes = [
        Route("/", list_page),
        Route("/experiments/{name}", experiment_page),
        Route("/api/experiments", experiment_list),
        Route("/api/experiments/{name}", experiment_data),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(Headers)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={NotFound: not_found, StoreError: unavailable},
    )


def _message(e: BaseException) -> str:
    text = str(e.args[0] if e.args else e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port), or one line saying why not."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    try:
        family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def address(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


def serve(
    storage: str | None,
    dir: str | os.PathLike | None,
    host: str,
    port: int,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Open the store, bind, say where, and serve until Ctrl-C (which returns normally)."""
    announce = announce or (lambda line: print(line, flush=True))
    with open_reader(storage, dir) as store:
        local = is_loopback(host)
        app = create_app(store, LOOPBACK_NAMES if local else None)
        sock = listen(host, port)
        announce(f"popbt dashboard: {address(sock, host)} (read-only; Ctrl-C stops)")
        if not local:
            print(f"popbt: warning: listening on {host}: anyone who reaches it sees the experiments", file=sys.stderr)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # uvicorn shut down gracefully and re-raised the signal: the user asked to stop
        finally:
            sock.close()
