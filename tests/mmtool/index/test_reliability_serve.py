"""`mmtool serve` answers every request, even a malformed one or one that hits a bug, with JSON; times out idle
sockets; refuses a foreign Host on loopback (DNS rebinding); takes an opt-in token; and drops no connection under
a bounded load (issue 16, finding 5)."""
import json
import socket
import threading
import time
from collections import Counter

import pytest
from typer.testing import CliRunner

from bench.serve_load import run_load
from mmtool.cli import app
from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples
from mmtool.index import ImageIndex
from mmtool.index.server import make_server

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def index(emoji_shards, tiny_clip_checkpoint, tmp_path_factory):
    built, _ = ImageIndex.build(str(emoji_shards / "val-*.tar"), tiny_clip_checkpoint,
                                tmp_path_factory.mktemp("serve") / "index", progress=False)
    return built


@pytest.fixture(scope="module")
def query_images(emoji_shards):
    return [raw.image for _, raw in zip(range(4), parsed_samples(resolve_shards(str(emoji_shards / "val-*.tar")),
                                                                 Counter()))]


class Serving:
    def __init__(self, index, **options):
        self.server = make_server(index, port=0, **options)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def raw(self, request: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
        """Sends bytes as they are; returns (status, headers, body) of the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:
            conn.sendall(request)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return int(lines[0].split()[1]), headers, body


def get(path: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


def post(path: str, body: bytes, length: str | None = None, extra: str = "") -> bytes:
    length = str(len(body)) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n{extra}Connection: close\r\n\r\n"
            .encode() + body)


def assert_json_error(answer, status: int, fragment: str) -> None:
    code, headers, body = answer
    assert code == status, (code, body)
    assert headers["Content-Type"].startswith("application/json")
    assert fragment in json.loads(body)["error"]


def test_malformed_requests_get_a_json_answer(index):
    with Serving(index) as serving:
        assert_json_error(serving.raw(post("/api/search-image", b"xx", length="lots")), 400, "Content-Length")
        assert_json_error(serving.raw(post("/api/search-image", b"xx", length="-5")), 400, "Content-Length")
        assert_json_error(serving.raw(b"POST /api/search-image HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), 411,
                          "Content-Length")
        assert_json_error(serving.raw(b"DELETE / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), 501, "DELETE")
        assert_json_error(serving.raw(b"GARBAGE\r\n\r\n"), 400, "")
        assert serving.raw(get("/api/search?q=%ff%fe&k=2"))[0] == 200  # undecodable bytes are replaced
        assert_json_error(serving.raw(post("/api/search-image", b"\x89PNG\r\n\x1a\n garbage")), 400, "query image")


def test_an_unexpected_exception_answers_500_and_the_server_goes_on(index, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug deep inside")

    with Serving(index) as serving:
        monkeypatch.setattr(index, "search", bug)
        assert_json_error(serving.raw(get("/api/search?q=cat")), 500, "internal error")
        monkeypatch.undo()
        assert serving.raw(get("/api/search?q=cat"))[0] == 200
    assert "a bug deep inside" in capsys.readouterr().err  # the traceback goes to the console, not the client


def test_an_idle_connection_is_closed_after_the_socket_timeout(index):
    with Serving(index, socket_timeout=0.5) as serving:
        with socket.create_connection(("127.0.0.1", serving.port), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
            start = time.monotonic()
            while conn.recv(65536):
                pass
            assert time.monotonic() - start < 5
        assert serving.raw(get("/"))[0] == 200


def test_on_loopback_only_a_loopback_host_header_is_answered(index):
    with Serving(index) as serving:
        for host in ("127.0.0.1", f"127.0.0.1:{serving.port}", f"localhost:{serving.port}", "[::1]"):
            assert serving.raw(get("/", host=host))[0] == 200, host
        for host in ("evil.example", f"evil.example:{serving.port}", "127.0.0.1.evil.example", ""):
            assert_json_error(serving.raw(get("/", host=host)), 403, "Host")
        assert_json_error(serving.raw(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"), 403, "Host")


def test_a_token_is_required_when_given(index):
    with Serving(index, token="s3cret") as serving:
        assert_json_error(serving.raw(get("/api/search?q=cat")), 401, "token")
        assert_json_error(serving.raw(get("/api/search?q=cat&token=wrong")), 401, "token")
        assert serving.raw(get("/api/search?q=cat", extra="Authorization: Bearer s3cret\r\n"))[0] == 200
        status, headers, _ = serving.raw(get("/?token=s3cret"))  # the page: a browser keeps the token as a cookie
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert serving.raw(get("/api/search?q=cat", extra=f"Cookie: {cookie}\r\n"))[0] == 200


def test_serve_warns_when_bound_beyond_loopback(tiny_clip_checkpoint, index, monkeypatch):
    from mmtool.index import server as server_module

    started = []

    class NotServing:
        server_address = ("0.0.0.0", 1)

        def serve_forever(self):
            started.append(True)

        def server_close(self):
            pass

    monkeypatch.setattr(server_module, "make_server", lambda *args, **kwargs: NotServing())
    result = CliRunner().invoke(app, ["serve", str(index.folder), "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 0 and started
    assert "warning: --host 0.0.0.0 is reachable from other machines and no --token is set" in result.stderr


def test_200_mixed_requests_from_8_threads_drop_nothing(index, query_images):
    with Serving(index) as serving:
        report = run_load(f"http://127.0.0.1:{serving.port}", query_images, requests=200, threads=8, seed=0)
    assert report["dropped"] == 0, report
    assert report["answered"] == 200 and set(report["statuses"]) <= {200, 400, 404, 411, 501}, report
    assert report["statuses"][200] > 100  # the well-formed majority answered with hits


def test_connections_beyond_the_limit_get_503_and_the_server_recovers(index):
    with Serving(index, max_connections=2, socket_timeout=5) as serving:
        idle = [socket.create_connection(("127.0.0.1", serving.port), timeout=10) for _ in range(2)]
        for conn in idle:
            conn.sendall(b"GET / HTTP/1.1\r\n")  # holding their slot, mid-request
        time.sleep(0.2)
        assert_json_error(serving.raw(get("/")), 503, "busy")
        for conn in idle:
            conn.close()
        deadline = time.monotonic() + 5
        while serving.raw(get("/"))[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
