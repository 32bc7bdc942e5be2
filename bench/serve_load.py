"""A bounded load test of `mmtool serve` on loopback: mixed text and image queries, thumbnails, the page, and some
malformed requests, from several threads; prints latency percentiles and the connections that got no answer.

    .venv/bin/python bench/serve_load.py                                      # tiny random CLIP over 300 emoji
    .venv/bin/python bench/serve_load.py --index runs/index --requests 2000 --threads 16

A dropped connection is one refused, reset, timed out or closed without a complete HTTP answer; a 4xx answer to a
malformed request is an answer.
"""
import argparse
import json
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote, urlparse

WORDS = ["grinning", "face", "red", "heart", "cat", "dog", "sun", "flag", "hand", "smiling", "blue", "star"]
MALFORMED = [
    b"POST /api/search-image HTTP/1.1\r\nHost: {host}\r\nContent-Length: lots\r\nConnection: close\r\n\r\n",
    b"POST /api/search-image HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    b"GET /api/search?q=&k=3 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    b"GET /api/search?q=cat&k=many HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    b"GET /../index.json HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    b"BREW / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    b"POST /api/search-image HTTP/1.1\r\nHost: {host}\r\nContent-Length: 12\r\nConnection: close\r\n\r\nnot an image",
]


def planned_requests(count: int, images: list[bytes], seed: int) -> list[bytes]:
    """About 55% text queries, 20% image queries, 10% page/thumbnail, 15% malformed."""
    rng = random.Random(seed)
    plan = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.55:
            text = quote(" ".join(rng.sample(WORDS, rng.randint(1, 3))))
            plan.append(f"GET /api/search?k={rng.randint(1, 30)}&q={text} HTTP/1.1\r\nHost: {{host}}\r\n"
                        f"Connection: close\r\n\r\n".encode())
        elif roll < 0.75:
            body = rng.choice(images)
            plan.append(f"POST /api/search-image?k=5 HTTP/1.1\r\nHost: {{host}}\r\nContent-Length: {len(body)}\r\n"
                        f"Connection: close\r\n\r\n".encode() + body)
        elif roll < 0.85:
            plan.append(b"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        else:
            plan.append(rng.choice(MALFORMED))
    return plan


def send(host: str, port: int, request: bytes, timeout: float) -> int | None:
    """The answer's status, or None when the connection got no complete answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(request.replace(b"{host}", f"{host}:{port}".encode()))
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    except OSError:
        return None
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator or not head.startswith(b"HTTP/1."):
        return None
    lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    if lengths and int(lengths[0]) != len(body):
        return None
    return int(head.split()[1])


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def run_load(base_url: str, images: list[bytes], requests: int = 2000, threads: int = 16, seed: int = 0,
             timeout: float = 60) -> dict:
    """Sends `requests` planned requests from `threads` threads; returns statuses, drops and latency (ms)."""
    url = urlparse(base_url)
    plan = planned_requests(requests, images, seed)
    statuses, latencies, dropped, lock, cursor = Counter(), [], [0], threading.Lock(), iter(plan)

    def worker() -> None:
        while True:
            with lock:
                request = next(cursor, None)
            if request is None:
                return
            start = time.perf_counter()
            status = send(url.hostname, url.port, request, timeout)
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                if status is None:
                    dropped[0] += 1
                else:
                    statuses[status] += 1
                    latencies.append(elapsed)

    start = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - start
    latencies.sort()
    return {"requests": requests, "threads": threads, "answered": sum(statuses.values()), "dropped": dropped[0],
            "statuses": dict(sorted(statuses.items())), "seconds": round(seconds, 2),
            "latency_ms": {f"p{round(q * 100)}": round(percentile(latencies, q), 1) for q in (0.5, 0.9, 0.99, 1.0)}
            if latencies else {}}


def tiny_index(folder: Path) -> Path:
    """A random tiny CLIP over 300 emoji: the server's work per request, not the model's, is what is measured."""
    from mmtool.data.building.emoji import build_emoji
    from mmtool.index import ImageIndex
    from tests.helpers.tiny_clip import write_tiny_clip

    build_emoji(folder / "emoji", limit=300, shard_size=100)
    clip = write_tiny_clip(folder / "emoji", folder / "clip.pt")
    ImageIndex.build(str(folder / "emoji" / "*-*.tar"), clip, folder / "index", progress=False)
    return folder / "index"


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers.tiny_clip
    from mmtool.index import ImageIndex
    from mmtool.index.server import make_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="an index folder (default: a tiny one built in a temporary folder)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = ImageIndex.open(args.index or tiny_index(Path(tmp)))
        index.encoder  # loaded before the clock starts
        images = [(index.folder / "thumbs" / f"{item['sha256']}.jpg").read_bytes() for item in index.items[:8]]
        server = make_server(index, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        report = run_load(f"http://127.0.0.1:{server.server_address[1]}", images, args.requests, args.threads,
                          args.seed)
        server.shutdown()
        server.server_close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
