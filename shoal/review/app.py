"""The review page's HTTP shell: routes, the token, and the checks that keep other sites out.

Starlette (with uvicorn as the server) because it is small, typed and well kept, runs plain
functions in a thread pool (frames are decoded in blocking OpenCV calls), and lets the gateway
mount the same app beside its gRPC server. Everything the page shows comes from
:class:`~shoal.review.session.ReviewSession`; this module only maps URLs to it.

One app serves one or more sessions under ``/s/{key}/``: ``shoal review`` serves one folder, the
gateway every finished job (the key is the job id). Security, in order:

- **what is served**: only the fixed routes below; a session is looked up by key among those the
  app was given (never a path from the URL), frames by integer index, the page's own files from
  the package folder (Starlette's StaticFiles refuses paths that leave it);
- **token**: with one configured, every request must carry it as ``Authorization: Bearer``, or
  the cookie that opening ``/?token=...`` sets (HttpOnly, SameSite=Strict);
- **other origins**: a write (POST) must be JSON and, when the browser sends an ``Origin``, it
  must be this server's own, so another site open in the same browser cannot correct a session
  (CSRF); the Host header must be one the app serves (DNS rebinding).
"""

from __future__ import annotations

import hmac
import socket
import threading
import webbrowser
from collections.abc import Callable, Iterable
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from shoal.review.session import ReviewError, ReviewSession
from shoal.video import VideoError

COOKIE = "shoal_review_token"
STATIC = resources.files("shoal.review") / "static"

SessionLookup = Callable[[str], ReviewSession | None]
"""A session by key, or None when there is no such session (or it cannot be reviewed yet)."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Guard:
    """ASGI middleware: Host check, then the token, then the origin of writes."""

    def __init__(self, app: ASGIApp, token: str | None, hosts: Iterable[str] | None):
        self.app, self.token, self.hosts = app, token, set(hosts) if hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = self._refusal(request)
        if response is None and self.token and request.query_params.get("token"):
            # opened from the URL `shoal review` printed: keep the token in a cookie, drop it from the address bar
            response = RedirectResponse(request.url.remove_query_params("token").path or "/", status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if self.hosts is not None and host not in self.hosts:
            return _error(421, f"this server does not serve the host {host!r}")
        if self.token:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
            given = given or request.query_params.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _error(401, "this page needs its token: open the URL with ?token=... that started it (shoal "
                                   "review prints it), or send Authorization: Bearer")
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            # the host only: behind a TLS proxy the page's scheme (https) is not the one this server sees
            if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
                return _error(403, f"writes from another origin ({origin}) are refused")
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return _error(415, "corrections are sent as application/json")
        return None


def create_app(sessions: SessionLookup, *, token: str | None = None, hosts: Iterable[str] | None = None,
               index: Callable[[], list[dict[str, Any]]] | None = None, home: str | None = None) -> Starlette:
    """The review app over `sessions`: ``/`` opens the session `home`, or lists `index`'s ``{key, title}``."""

    def session_or_404(request: Request) -> ReviewSession:
        session = sessions(request.path_params["key"])
        if session is None:
            raise LookupError(f"no session {request.path_params['key']!r} to review here")
        return session

    def front(request: Request) -> Response:
        if home is not None:
            return RedirectResponse(f"/s/{home}/", status_code=303)
        entries = index() if index else []
        items = "".join(f'<li><a href="/s/{quote(e["key"])}/">{escape(e.get("title", e["key"]))}</a></li>'
                        for e in entries)  # job names are the users': escaped
        return HTMLResponse(f"<!doctype html><title>Shoal review</title><h1>Shoal review</h1>"
                            f"<ul>{items or '<li>no finished session to review</li>'}</ul>")

    def page(request: Request) -> Response:
        session_or_404(request)
        return HTMLResponse((STATIC / "index.html").read_text())

    def state(request: Request) -> Response:
        return JSONResponse(session_or_404(request).state())

    def progress(request: Request) -> Response:
        return JSONResponse(session_or_404(request).frames.progress())

    def frame(request: Request) -> Response:
        data = session_or_404(request).jpeg(request.path_params["frame"])
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def blobs(request: Request) -> Response:
        return JSONResponse(session_or_404(request).blobs(request.path_params["frame"]))

    async def correct(request: Request) -> Response:
        session = session_or_404(request)
        try:
            op = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(op, dict):
            return _error(400, "a correction is a JSON object with an 'op'")
        return JSONResponse(await run_in_threadpool(session.correct, op))

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, str(exc))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def undecodable(request: Request, exc: Exception) -> Response:
        return _error(500, str(exc))

    routes = [
        Route("/", front),
        Route("/s/{key}/", page),
        Route("/s/{key}/api/state", state),
        Route("/s/{key}/api/progress", progress),
        Route("/s/{key}/api/frames/{frame:int}.jpg", frame),
        Route("/s/{key}/api/blobs/{frame:int}", blobs),
        Route("/s/{key}/api/corrections", correct, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Guard, token=token, hosts=hosts)],
                     exception_handlers={LookupError: not_found, ReviewError: bad_request,
                                         VideoError: undecodable})


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (port 0: any free one), so the URL can be printed before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def server(app: Starlette) -> uvicorn.Server:
    """A uvicorn server for `app`: ``run(sockets=[listen(...)])`` blocks, ``should_exit = True`` ends it."""
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))


class OpenSessions:
    """Sessions by key, each opened on its first request and kept open (its frame decoders, its log).

    `folder_of` maps a key to its session folder, or None for a key that names no reviewable session;
    `listing` gives ``[{"key", "title"}]`` for the home page.
    """

    def __init__(self, folder_of: Callable[[str], str | None], listing: Callable[[], list[dict[str, Any]]],
                 opened: dict[str, ReviewSession] | None = None):
        self._folder_of, self.index = folder_of, listing
        self._open: dict[str, ReviewSession] = dict(opened or {})
        self._lock = threading.Lock()

    def __call__(self, key: str) -> ReviewSession | None:
        with self._lock:
            if key not in self._open:
                folder = self._folder_of(key)
                if folder is None:
                    return None
                self._open[key] = ReviewSession(folder)
            return self._open[key]

    def close(self) -> None:
        with self._lock:
            for session in self._open.values():
                session.close()
            self._open.clear()


def serve_folder(folder: str | Path, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 open_browser: bool = True, ready: Callable[[str], None] = print) -> None:
    """``shoal review``: serve one session folder until Ctrl-C; `ready` gets the URL (token included)."""
    key = "local"
    opened = ReviewSession(folder)  # a ReviewError names what is missing before anything listens
    sessions = OpenSessions(lambda _: None, lambda: [], {key: opened})
    loopback = {"127.0.0.1", "localhost", "::1"}
    sock = listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
    http = server(create_app(sessions, token=token, home=key, hosts=loopback if host in loopback else None))
    ready(url)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        http.run(sockets=[sock])
    finally:
        sessions.close()
        sock.close()
