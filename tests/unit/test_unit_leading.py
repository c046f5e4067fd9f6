"""JobService.begin()/end(): a server leads (the session channel bound, sessions reconciled,
stops carried out), stands by (nothing of that left running, nothing held about any session),
and leads again, in process with the live-record tests' fakes and a real channel socket."""

from __future__ import annotations

import asyncio
import shutil
import tempfile

from test_unit_live_records import READY, FakeApp, job_service, start

from uws import orm
from uws.sessions.channel import SessionChannel
from uws.sessions.status import JobStatus


def test_lead_stand_by_and_lead_again() -> None:
    short = tempfile.mkdtemp(prefix="uwsld-", dir="/tmp")  # ipc paths are limited to ~100 bytes

    async def main() -> None:
        app = FakeApp()
        app.data_dir = short
        app.session_channel_url = f"ipc://{short}/ch/sessions.sock"
        jobs = job_service(app)
        await jobs.begin()
        assert jobs.leading and jobs.channel.bound
        first_term = jobs.channel.epoch
        job_id = await start(jobs, app)
        await jobs.on_message(job_id, READY)
        # A stop under way: its helper has not answered, so it waits, then falls back on the
        # spawner (in 10 s). Standing by must end it: the next leader carries it out.
        assert await jobs.request_stop(job_id, app.user.id)
        await asyncio.sleep(0.05)
        assert jobs._tasks  # the reconcile loop and the stop

        await jobs.end()
        assert not jobs.leading and not jobs.channel.bound and jobs.channel.epoch == ""
        assert jobs._tasks == set() and len(jobs.live) == 0
        assert jobs.logs._sweep_task is not None and jobs.logs._sweep_task.cancelled()
        assert 0 in app.proxy.forgotten  # every cached target dropped
        # Another server may bind the endpoint meanwhile, and let it go.
        other = SessionChannel(app.session_channel_url, jobs.secret_for, jobs.on_message)
        other.bind()
        other.close()
        await asyncio.sleep(0.3)
        assert app.spawned[job_id].ended is None, "a server standing by stopped a session"

        await jobs.begin()  # leading again: a new term, every active session re-attached
        assert jobs.channel.bound and jobs.channel.epoch not in ("", first_term)
        record = jobs.live.get(job_id)
        assert record is not None and record.stop_requested  # (its stop resumed)
        status = app.db.call(lambda s: s.get(orm.Job, job_id).status)
        assert status == JobStatus.STOPPING
        await jobs.end()
        assert jobs._tasks == set()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        shutil.rmtree(short, ignore_errors=True)
