"""Downloads of a workspace file (GET /workspaces/<id>/files/<path>): throughput, and how much
the server's memory (RSS) grows while it streams a big file, one download and several at once.

    python bench/download_bench.py [--mib 1024] [--parallel 4] [--rounds 3]

Starts a server on SQLite (its data in bench/.work/), writes a file of --mib MiB of random bytes
into a workspace, and downloads it with requests (1 MiB reads, checked against its SHA-256);
the server's RSS is sampled every 10 ms, and /status/ is timed while the parallel downloads run. The file is in the page cache after the first round,
so the later rounds measure the server rather than the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import threading
import time

import psutil

from common import WORK, start_server
from helpers.api import create, login, ws_dir
from helpers.configs import LOCAL_CONFIG
from helpers.harness import Client


def write_file(path: str, mib: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def download(client: Client, url: str) -> tuple[int, str]:
    r = client.get(url, stream=True)
    assert r.status_code == 200, r.text
    digest, count = hashlib.sha256(), 0
    for chunk in r.iter_content(1 << 20):
        digest.update(chunk)
        count += len(chunk)
    return count, digest.hexdigest()


class RssPeak:
    """The highest RSS of a process while the block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.baseline = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample)

    def sample(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    server, _ = start_server(tempfile.mkdtemp(dir=WORK), LOCAL_CONFIG)
    try:
        owner = login(server, server.new_client_token())
        ws_id = create(owner)["id"]
        path = os.path.join(ws_dir(server, owner, ws_id), "big.bin")
        expected = write_file(path, args.mib)
        size = args.mib << 20
        url = f"/workspaces/{ws_id}/files/big.bin"
        pid = server.proc.pid  # type: ignore[union-attr]
        print(
            f"file: {args.mib} MiB; server RSS at rest {psutil.Process(pid).memory_info().rss / 2**20:.0f} MiB"
        )
        speeds, growths = [], []
        for i in range(args.rounds):
            with RssPeak(pid) as rss:
                t0 = time.perf_counter()
                count, digest = download(owner, url)
                seconds = time.perf_counter() - t0
            assert (count, digest) == (size, expected)
            speeds.append(size / seconds / 1e6)
            growths.append((rss.peak - rss.baseline) / 2**20)
            print(f"  round {i + 1}: {speeds[-1]:.0f} MB/s, server RSS growth {growths[-1]:.1f} MiB")
        print(
            f"one download: median {statistics.median(speeds):.0f} MB/s, RSS growth at most {max(growths):.1f} MiB"
        )

        clients = [Client(owner.base, owner.token) for _ in range(args.parallel)]
        results: list[tuple[int, str]] = []
        with RssPeak(pid) as rss:
            t0 = time.perf_counter()
            threads = [threading.Thread(target=lambda c=c: results.append(download(c, url))) for c in clients]
            for t in threads:
                t.start()
            latencies = []  # the event loop keeps answering while the downloads stream
            while any(t.is_alive() for t in threads):
                s0 = time.perf_counter()
                assert owner.get("/status/").status_code == 200
                latencies.append((time.perf_counter() - s0) * 1000)
                time.sleep(0.05)
            for t in threads:
                t.join()
            seconds = time.perf_counter() - t0
        assert results == [(size, expected)] * args.parallel
        total = size * args.parallel / seconds / 1e6
        print(
            f"{args.parallel} at once: {total:.0f} MB/s together, "
            f"server RSS growth {(rss.peak - rss.baseline) / 2**20:.1f} MiB"
        )
        if latencies:
            print(
                f"/status/ meanwhile: median {statistics.median(latencies):.1f} ms, "
                f"max {max(latencies):.1f} ms ({len(latencies)} requests)"
            )
    finally:
        server.close()


if __name__ == "__main__":
    main()
