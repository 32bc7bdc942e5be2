"""`mmtool serve`: a local web page over an ImageIndex (standard library http.server, no extra dependency).

    GET  /                      the page: search box, upload, thumbnail grid
    GET  /api/search?q=TEXT&k=N  JSON hits for a text
    POST /api/search-image?k=N   JSON hits for the image in the request body
    GET  /thumb/SHA256.jpg      a thumbnail
"""
import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from mmtool.errors import MmtoolError
from mmtool.index.page import PAGE_HTML

THUMB = re.compile(r"/thumb/([0-9a-f]{64})\.jpg")
MAX_UPLOAD = 20 * 1024 * 1024
DEFAULT_K = 24


def make_server(index, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0 picks a free one: read server.server_address)."""
    search_lock = threading.Lock()  # one query at a time through the model: CPU threads are already all in use
    page = PAGE_HTML.replace("__COUNT__", str(len(index.items))).replace("__K__", str(DEFAULT_K))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 (the base class's name) -- keep the console quiet
            pass

        def send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_json(self, status: int, value) -> None:
            self.send(status, json.dumps(value, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def answer(self, query: dict, **search) -> None:
            try:
                k = max(1, min(int(query.get("k", [DEFAULT_K])[0]), 200))
            except ValueError:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": "k must be an integer"})
                return
            try:
                with search_lock:
                    hits = index.search(**search, k=k)
            except MmtoolError as err:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
                return
            self.send_json(HTTPStatus.OK, [hit.as_dict() for hit in hits])

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/":
                self.send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
            elif url.path == "/api/search":
                text = query.get("q", [""])[0].strip()
                if not text:
                    self.send_json(HTTPStatus.BAD_REQUEST, {"error": "empty query: pass ?q=some text"})
                    return
                self.answer(query, text=text)
            elif match := THUMB.fullmatch(url.path):
                path = index.folder / "thumbs" / f"{match.group(1)}.jpg"
                if path.is_file():
                    self.send(HTTPStatus.OK, path.read_bytes(), "image/jpeg")
                else:
                    self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such thumbnail"})
            else:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"})

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if url.path != "/api/search-image":
                self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_UPLOAD:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": f"upload an image of 1 byte to {MAX_UPLOAD} bytes"})
                return
            self.answer(parse_qs(url.query), image=self.rfile.read(length))

    return ThreadingHTTPServer((host, port), Handler)
