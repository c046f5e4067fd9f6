"""Serves slurmrestd's newer field layout (OpenAPI v0.0.40) in front of the real v0.0.38 daemon.

Debian 12's Slurm 22.05 cannot serve v0.0.39 or later, so this is the one stand-in in the Slurm
tests: requests in the newer layout are checked strictly (an old-layout field is refused, as
the real daemon would mis-read it) and translated down; answers are translated up. The jobs
themselves are real. GET /_counts tells how many requests of each kind went through.

Usage: python slurmrest_translator.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from tornado import ioloop, web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

NEW, OLD = "v0.0.40", "v0.0.38"
NUMBERS = ("job_id", "start_time", "end_time", "time_limit", "cpus", "submit_time")
counts: Counter[str] = Counter()


def wrapped(value: Any) -> dict[str, Any]:
    if value is None:
        return {"set": False, "infinite": True, "number": 0}
    return {"set": True, "infinite": False, "number": value}


def unwrap(job: dict[str, Any], key: str) -> list[str]:
    """A newer-layout number field to a plain number; the problems, if it is not one."""
    if key not in job:
        return []
    value = job[key]
    if not isinstance(value, dict) or set(value) - {"set", "infinite", "number"}:
        return [f"#/job/{key}/: expected an object with set/infinite/number, got {value!r}"]
    job[key] = value["number"]
    return []


def down(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    problems = []
    if "script" in body:
        problems.append("#/script: the script belongs in job.script in this version")
    job = dict(body.get("job") or {})
    script = job.pop("script", None)
    if not isinstance(script, str):
        problems.append("#/job/script: missing")
    env = job.get("environment")
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        problems.append("#/job/environment/: expected a list of NAME=value strings")
    else:
        job["environment"] = dict(e.split("=", 1) for e in env)
    if "gres" in job:
        problems.append("#/job/gres/: unknown field in this version (use tres_per_node)")
    if "tres_per_node" in job:
        job["gres"] = job.pop("tres_per_node").removeprefix("gres/")
    for key in ("time_limit", "memory_per_node"):
        problems += unwrap(job, key)
    if "nodes" in job:
        if not isinstance(job["nodes"], str):
            problems.append("#/job/nodes/: expected a string")
        else:
            job["nodes"] = int(job["nodes"])
    return {"job": job, "script": script}, problems


def up(data: dict[str, Any]) -> dict[str, Any]:
    for job in data.get("jobs") or []:
        job["job_state"] = [job.get("job_state")]
        for key in NUMBERS:
            if key in job:
                job[key] = wrapped(job[key])
    return data


class Translate(web.RequestHandler):
    async def handle(self, method: str, path: str) -> None:
        upstream = self.settings["upstream"]
        counts[f"{method} {path.split('/')[0]}"] += 1
        body = None
        if method == "POST":
            translated, problems = down(json.loads(self.request.body or b"{}"))
            if problems:
                self.set_status(400)
                self.finish({"errors": [{"error": p} for p in problems]})
                return
            body = json.dumps(translated)
        headers = {k: v for k, v in self.request.headers.items() if k.lower().startswith("x-slurm")}
        headers["Content-Type"] = "application/json"
        response = await AsyncHTTPClient().fetch(
            HTTPRequest(f"{upstream}/slurm/{OLD}/{path}", method=method, headers=headers, body=body),
            raise_error=False,
        )
        self.set_status(response.code if response.code != 599 else 502)
        try:
            data = json.loads(response.body or b"{}")
        except ValueError:
            data = {"errors": [{"error": "not JSON"}]}
        self.finish(up(data))

    async def get(self, path: str) -> None:
        await self.handle("GET", path)

    async def post(self, path: str) -> None:
        await self.handle("POST", path)

    async def delete(self, path: str) -> None:
        await self.handle("DELETE", path)


class Counts(web.RequestHandler):
    def get(self) -> None:
        self.finish(dict(counts))


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")
    app = web.Application([(rf"/slurm/{NEW}/(.*)", Translate), (r"/_counts", Counts)], upstream=upstream)
    app.listen(port, "127.0.0.1")
    print("ready", flush=True)
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
