"""SlurmRestSpawner: sessions as Slurm batch jobs, through slurmrestd's REST API with JWT.

Jobs are submitted and cancelled with a JWT of the workspace owner (so they run as that account);
status comes from one GET of all jobs per poll interval, with a JWT of `status_username`. Tokens
come from `token_command` (by default `scontrol token`, which needs root or SlurmUser) and are
renewed well before they expire.

slurmrestd's field layout changed after OpenAPI v0.0.38 (Slurm 22.05, as Debian 12 ships it):
from v0.0.39 numbers may come as {"set", "infinite", "number"} objects and `environment` is a
list of NAME=value strings; from v0.0.40 `job_state` is a list and the script goes inside `job`.
Both layouts are read and written here; `api_version` picks one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import re
import time
from datetime import datetime
from typing import Any, ClassVar

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Integer, List, Unicode, validate

from .slurm import PENDING, RUNNING, SchedulerUnavailable, SlurmBase, SlurmJob


def number(value: Any) -> float | None:
    """A number in either layout: 5, or {"set": true, "infinite": false, "number": 5}."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def job_state(value: Any) -> str:
    """`job_state` in either layout: "RUNNING", or ["RUNNING", "COMPLETING"] (base state first)."""
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "").upper()


def version_number(api_version: str) -> int:
    match = re.fullmatch(r"v0\.0\.(\d+)", api_version)
    if not match:
        raise ValueError(f"api_version must look like v0.0.38, not {api_version!r}")
    return int(match.group(1))


def job_from_rest(record: dict[str, Any], now: float) -> SlurmJob:
    """One entry of GET /jobs, as a SlurmJob. `now` is the epoch time of the answer."""
    state = job_state(record.get("job_state"))
    start = number(record.get("start_time"))
    end = number(record.get("end_time"))
    limit = number(record.get("time_limit"))  # minutes; None: unlimited
    expected = ""
    elapsed = cpus = time_left = None
    if state in PENDING:
        if start:
            expected = datetime.fromtimestamp(start).isoformat(timespec="seconds")
    elif start:
        ran_until = now if state in RUNNING or not end else end
        elapsed = max(0.0, ran_until - start)
        allocated = number(record.get("cpus"))
        cpus = int(allocated) if allocated else None
        if limit is not None and state in RUNNING:
            time_left = max(0, int(limit * 60 - elapsed))
    return SlurmJob(
        state=state,
        reason=str(record.get("state_reason") or ""),
        expected_start=expected,
        time_left=time_left,
        cpus=cpus,
        elapsed=elapsed,
        node=str(record.get("nodes") or "") if state in RUNNING else "",
    )


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim, read without verifying the signature (only to know when to renew)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


class SlurmRestSpawner(SlurmBase):
    url = Unicode(
        "http://127.0.0.1:6820",
        config=True,
        help="""slurmrestd's base URL (without /slurm/...). Not the original config's
        `connection_details.root_url`, which named PSC's own job-control service.""",
    )
    api_version = Unicode(
        "v0.0.38",
        config=True,
        help="""slurmrestd OpenAPI version to speak, e.g. v0.0.38 (Slurm 22.05) or v0.0.40 and
        later (the newer field layout). It must be one the daemon was started with (-s).""",
    )

    @validate("api_version")
    def _check_version(self, proposal: Any) -> str:
        version_number(proposal["value"])
        return proposal["value"]

    token_command = List(
        Unicode(),
        ["scontrol", "token", "username={username}", "lifespan={lifespan}"],
        config=True,
        help="""Command that prints a Slurm JWT for a user (as SLURM_JWT=<token> or the bare
        token). {username} and {lifespan} are filled in. The default needs the server to run as
        root or as SlurmUser; a site may point this at its own token service instead.""",
    )
    token_lifespan = Integer(
        3600,
        config=True,
        help="""Seconds each requested JWT stays valid. From config.json: the resource's
        `connection_details.token_lifespan`.""",
    )
    token_renew_seconds = Float(
        300.0,
        config=True,
        help="""A cached JWT is renewed once it has fewer than this many seconds left (never
        fewer than 60, so no request goes out with a token about to expire).""",
    )
    status_username = Unicode(
        "",
        config=True,
        help="""Account whose JWT reads the status of all jobs (one GET per poll interval).
        Default: the account the server runs as. It must be allowed to see every user's jobs.""",
    )
    connect_timeout = Float(5.0, config=True, help="Seconds to connect to slurmrestd.")
    request_timeout = Float(30.0, config=True, help="Seconds a slurmrestd request may take.")
    environment = List(
        Unicode(),
        ["PATH=/usr/local/bin:/usr/bin:/bin"],
        config=True,
        help="""Environment of the job script, as NAME=value strings (slurmrestd needs one;
        HOME, USER and LOGNAME of the workspace owner are added).""",
    )

    # username -> (token, epoch expiry); shared by every session of this server.
    _tokens: ClassVar[dict[str, tuple[str, float]]] = {}
    _token_locks: ClassVar[dict[str, asyncio.Lock]] = {}

    @property
    def status_user(self) -> str:
        return self.status_username or pwd.getpwuid(os.geteuid()).pw_name

    @property
    def version(self) -> int:
        return version_number(self.api_version)

    # ---- tokens ------------------------------------------------------------------------------
    async def token(self, username: str) -> str:
        lock = self._token_locks.setdefault(username, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(username)
            margin = max(60.0, self.token_renew_seconds)
            if cached is not None and cached[1] - time.time() > margin:
                return cached[0]
            argv = [
                part.format(username=username, lifespan=self.token_lifespan) for part in self.token_command
            ]
            try:
                out = (await self.run(*argv)).strip()
            except SchedulerUnavailable as e:
                raise SchedulerUnavailable(f"Could not get a Slurm token for {username}: {e}") from None
            if not out:
                raise SchedulerUnavailable(f"Could not get a Slurm token for {username}: no output")
            token = out.splitlines()[-1].removeprefix("SLURM_JWT=").strip()
            expiry = jwt_expiry(token) or time.time() + self.token_lifespan
            self._tokens[username] = (token, expiry)
            return token

    # ---- HTTP --------------------------------------------------------------------------------
    async def call(self, method: str, path: str, username: str, body: Any = None) -> dict[str, Any]:
        """One slurmrestd request as `username`; its JSON answer. Errors Slurm lists, a refused
        token, a timeout or an unreachable daemon raise SchedulerUnavailable with the reason."""
        token = await self.token(username)
        request = HTTPRequest(
            f"{self.url.rstrip('/')}/slurm/{self.api_version}/{path}",
            method=method,
            headers={
                "X-SLURM-USER-NAME": username,
                "X-SLURM-USER-TOKEN": token,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            body=json.dumps(body) if body is not None else None,
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as e:
            raise SchedulerUnavailable(f"slurmrestd at {self.url} did not answer: {e}") from None
        if response.code == 599:
            raise SchedulerUnavailable(f"slurmrestd at {self.url} did not answer: {response.error}")
        body = response.body or b"{}"
        try:
            if len(body) < 1 << 20:
                data = json.loads(body)
            else:  # the job list of a big cluster: parsing it must not stall the event loop
                data = await asyncio.get_running_loop().run_in_executor(None, json.loads, body)
        except ValueError:
            data = {}
        errors = [
            e.get("error") or e.get("description") or str(e)
            for e in (data.get("errors") or [])
            if isinstance(e, dict)
        ]
        if response.code == 401:
            self._tokens.pop(username, None)  # renewed on the next call
        if response.code >= 400 or errors:
            detail = "; ".join(str(e) for e in errors) or f"HTTP {response.code}"
            raise SchedulerUnavailable(f"slurmrestd: {detail}")
        return data

    # ---- the three operations ------------------------------------------------------------------
    def submit_body(self, spec: dict[str, Any], script: str) -> dict[str, Any]:
        """The job description; slurmrestd ignores #SBATCH lines, so every option is a field."""
        wanted = self.job_options(spec)
        user = self.account.username
        env = [*self.environment, f"USER={user}", f"LOGNAME={user}"]
        try:
            env.append(f"HOME={pwd.getpwnam(user).pw_dir}")
        except KeyError:
            pass  # an account known only on the cluster: Slurm's default applies
        newer = self.version >= 39

        def num(value: int) -> Any:
            return {"set": True, "infinite": False, "number": value} if newer else value

        output = os.path.join(self.job_dir, "slurm.out")
        job: dict[str, Any] = {
            "name": f"uws-{self.job_id}",
            "current_working_directory": self.job_dir,
            "standard_output": output,
            "standard_error": output,
            "nodes": "1" if newer else 1,
            "cpus_per_task": wanted["cpus"],
            "requeue": False,
            "environment": env if newer else dict(item.split("=", 1) for item in env),
        }
        if "memory_mb" in wanted:
            job["memory_per_node"] = num(wanted["memory_mb"])
        if "time_limit" in wanted:
            job["time_limit"] = num(wanted["time_limit"])
        if "partition" in wanted:
            job["partition"] = wanted["partition"]
        if wanted.get("gpu"):  # as sbatch --gres=gpu:1 (v0.0.38 has no tres_per_* fields)
            if newer:
                job["tres_per_node"] = "gres/gpu:1"
            else:
                job["gres"] = "gpu:1"
        if self.version >= 40:
            job["script"] = script
            return {"job": job}
        return {"job": job, "script": script}

    async def submit(self, spec: dict[str, Any], script: str) -> int:
        try:
            data = await self.call(
                "POST", "job/submit", self.account.username, self.submit_body(spec, script)
            )
        except SchedulerUnavailable as e:
            # slurmrestd 22.05 says only "Failure during parsing" for options the cluster lacks.
            asked = ", ".join(f"{k}={v}" for k, v in self.job_options(spec).items())
            raise SchedulerUnavailable(f"{e} (the session asked for {asked})") from None
        job_id = number(data.get("job_id"))
        if job_id is None:
            raise SchedulerUnavailable(f"slurmrestd accepted the job but gave no job id: {data}")
        return int(job_id)

    async def fetch(self, ids: list[int]) -> dict[int, SlurmJob]:
        if not ids:
            return {}
        data = await self.call("GET", "jobs", self.status_user)
        now = time.time()
        wanted = set(ids)
        results = {}
        for record in data.get("jobs") or []:
            job_id = number(record.get("job_id"))
            if job_id is not None and int(job_id) in wanted:
                results[int(job_id)] = job_from_rest(record, now)
        return results

    async def fetch_node_addresses(self) -> dict[str, str]:
        data = await self.call("GET", "nodes", self.status_user)
        return {
            str(node["name"]): str(node["address"])
            for node in data.get("nodes") or []
            if isinstance(node, dict) and node.get("name") and node.get("address")
        }

    async def health(self) -> tuple[bool, str] | None:
        try:
            await self.call("GET", "ping", self.status_user)
        except SchedulerUnavailable as e:
            return False, str(e)
        return True, "Connected successfully."

    async def cancel(self) -> None:
        await self.call("DELETE", f"job/{self.slurm_job_id}", self.account.username)

    async def update_time_limit(self, minutes: int) -> None:
        value: Any = {"set": True, "infinite": False, "number": minutes} if self.version >= 39 else minutes
        body: dict[str, Any] = {"time_limit": value}
        # v0.0.38 takes the job's properties as the body; later versions the same fields too.
        await self.call("POST", f"job/{self.slurm_job_id}", self.operator_username, body)
