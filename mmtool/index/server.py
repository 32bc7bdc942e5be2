"""`mmtool serve`: a local web page over an ImageIndex (standard library http.server, no extra dependency).

    GET  /                      the page: search box, upload, thumbnail grid
    GET  /api/search?q=TEXT&k=N  JSON hits for a text
    POST /api/search-image?k=N   JSON hits for the image in the request body
    GET  /thumb/SHA256.jpg      a thumbnail

Every request gets an answer: errors are JSON `{"error": ...}` with a 4xx status, and an unexpected exception a
500 (its traceback goes to the console, not to the client). Idle sockets time out, and connections past
MAX_CONNECTIONS get a 503 at once. Bound to loopback, only requests whose Host names loopback are answered (a web
page cannot reach the server through DNS rebinding); with a token, every request must carry it
(`Authorization: Bearer`, `?token=`, or the cookie the page sets).
"""
import hmac
import ipaddress
import json
import re
import sys
import threading
import traceback
from contextlib import suppress
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlparse

from mmtool.errors import MmtoolError
from mmtool.index.page import PAGE_HTML

THUMB = re.compile(r"/thumb/([0-9a-f]{64})\.jpg")
MAX_UPLOAD = 20 * 1024 * 1024
DEFAULT_K = 24
SOCKET_TIMEOUT = 30.0  # seconds a connection may sit idle mid-request
MAX_CONNECTIONS = 256  # connections served at once (a thread each); queries still run one at a time
TOKEN_COOKIE = "mmtool_token"
_BUSY = json.dumps({"error": "server busy: too many connections, retry shortly"}).encode()
BUSY_ANSWER = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
               f"Content-Length: {len(_BUSY)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode() + _BUSY
LOOPBACK_NAMES = {"localhost"}


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """`Host` without its port: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class IndexServer(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` at once: past that a connection is answered 503 at
    once, so slow or idle clients cannot pile up threads."""
    daemon_threads = True  # a stuck connection never blocks shutdown
    request_queue_size = 128  # the listen backlog: bursts of clients wait instead of being refused

    def __init__(self, address, handler, max_connections: int):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            with suppress(OSError):
                request.sendall(BUSY_ANSWER)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def make_server(index, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                socket_timeout: float = SOCKET_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> IndexServer:
    """A server bound to host:port (port 0 picks a free one: read server.server_address)."""
    search_lock = threading.Lock()  # one query at a time through the model: CPU threads are already all in use
    page = PAGE_HTML.replace("__COUNT__", str(len(index.items))).replace("__K__", str(DEFAULT_K))
    check_host = is_loopback(host)

    class Handler(BaseHTTPRequestHandler):
        timeout = socket_timeout

        def log_message(self, format, *args):  # noqa: A002 (the base class's name) -- keep the console quiet
            pass

        def send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def send_json(self, status: int, value) -> None:
            self.send(status, json.dumps(value, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own refusals (bad request line, unknown method, ...) as JSON too."""
            self.close_connection = True
            self.request_version = "HTTP/1.0"  # a garbled request line parses as HTTP/0.9, which has no status line
            self.send_json(code, {"error": message or HTTPStatus(code).phrase})

        def __getattr__(self, name: str):
            if name.startswith("do_"):  # any other method: 501 in JSON
                return lambda: self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"method {name[3:]} not supported")
            raise AttributeError(name)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.guarded(self.get)

        def do_POST(self) -> None:  # noqa: N802
            self.guarded(self.post)

        def guarded(self, route) -> None:
            try:
                self.admit()
                route()
            except RequestError as err:
                self.send_json(err.status, {"error": str(err)})
            except MmtoolError as err:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True  # the client left, or stalled past the socket timeout
            except Exception as err:  # noqa: BLE001 -- a bug must not leave the client without an answer
                print(f"serve: {self.command} {self.path}: unexpected error", file=sys.stderr)
                traceback.print_exc()
                self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(err).__name__})"})

        def admit(self) -> None:
            if check_host and not is_loopback(host_name(self.headers.get("Host", ""))):
                raise RequestError(HTTPStatus.FORBIDDEN, "Host must name this machine (localhost or a loopback "
                                                         "address): the server is bound to loopback")
            if token is not None and not any(hmac.compare_digest(given.encode(), token.encode())
                                             for given in self.offered_tokens()):
                raise RequestError(HTTPStatus.UNAUTHORIZED, "missing or wrong token: open /?token=TOKEN or send "
                                                            "Authorization: Bearer TOKEN")

        def offered_tokens(self) -> list[str]:
            offered = parse_qs(urlparse(self.path).query).get("token", [])
            authorization = self.headers.get("Authorization", "")
            if authorization.startswith("Bearer "):
                offered.append(authorization[len("Bearer "):])
            try:
                cookie = SimpleCookie(self.headers.get("Cookie", ""))
            except CookieError:
                cookie = {}
            if TOKEN_COOKIE in cookie:
                offered.append(cookie[TOKEN_COOKIE].value)
            return offered

        def answer(self, query: dict, **search) -> None:
            try:
                k = max(1, min(int(query.get("k", [DEFAULT_K])[0]), 200))
            except ValueError:
                raise RequestError(HTTPStatus.BAD_REQUEST, "k must be an integer") from None
            with search_lock:
                hits = index.search(**search, k=k)
            self.send_json(HTTPStatus.OK, [hit.as_dict() for hit in hits])

        def get(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/":
                cookie = {"Set-Cookie": f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"} if token else {}
                self.send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8", cookie)
            elif url.path == "/api/search":
                text = query.get("q", [""])[0].strip()
                if not text:
                    raise RequestError(HTTPStatus.BAD_REQUEST, "empty query: pass ?q=some text")
                self.answer(query, text=text)
            elif match := THUMB.fullmatch(url.path):
                path = index.folder / "thumbs" / f"{match.group(1)}.jpg"
                if not path.is_file():
                    raise RequestError(HTTPStatus.NOT_FOUND, "no such thumbnail")
                self.send(HTTPStatus.OK, path.read_bytes(), "image/jpeg")
            else:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no page {url.path}")

        def post(self) -> None:
            url = urlparse(self.path)
            if url.path != "/api/search-image":
                raise RequestError(HTTPStatus.NOT_FOUND, f"no page {url.path}")
            self.answer(parse_qs(url.query), image=self.read_body())

        def read_body(self) -> bytes:
            declared = self.headers.get("Content-Length")
            if declared is None:
                self.close_connection = True
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required (the image's size in bytes)")
            if not declared.strip().isdigit() or not 0 < int(declared) <= MAX_UPLOAD:
                self.close_connection = True  # the body's end is unknown: this connection cannot carry another
                raise RequestError(HTTPStatus.BAD_REQUEST, f"Content-Length {declared[:40]!r}: upload an image of "
                                                           f"1 byte to {MAX_UPLOAD} bytes")
            body = self.rfile.read(int(declared))
            if len(body) < int(declared):
                raise RequestError(HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {declared} bytes")
            return body

    return IndexServer((host, port), Handler, max_connections)
