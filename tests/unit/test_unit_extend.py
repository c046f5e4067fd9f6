"""uws/sessions/extending.py and the tracker's re-send rule in process: what a request may ask
for, the job type's maximum, the limit a session has now, and when a helper is told again."""

from __future__ import annotations

from typing import Any

import pytest

from uws.errors import APIError
from uws.sessions.extending import current_limit_seconds, max_time_limit_minutes, requested_minutes
from uws.sessions.tracker import state_limit_differs

TIME_PARAM = {"variable_name": "time_limit_min", "validation": {"type": "int", "min": 1, "max": 480}}


@pytest.mark.parametrize("minutes", [None, 0, -1, 1.5, "10", True, [], {}])
def test_minutes_must_be_a_positive_whole_number(minutes: Any) -> None:
    with pytest.raises(APIError) as e:
        requested_minutes({} if minutes is None else {"minutes": minutes})
    assert e.value.status == 400


def test_minutes_accepted_and_absurd_ones_refused() -> None:
    assert requested_minutes({"minutes": 30}) == 30
    with pytest.raises(APIError) as e:
        requested_minutes({"minutes": 10**9})
    assert e.value.status == 422


def test_maximum_is_the_job_types_else_the_parameters() -> None:
    assert max_time_limit_minutes({"max_time_limit_min": 90}, [TIME_PARAM]) == 90
    assert max_time_limit_minutes({}, [TIME_PARAM]) == 480
    assert max_time_limit_minutes({"max_time_limit_min": "90"}, [TIME_PARAM]) == 90
    assert max_time_limit_minutes({"max_time_limit_min": "ninety"}, [TIME_PARAM]) == 480
    assert max_time_limit_minutes({}, [{"variable_name": "num_cpus", "validation": {"max": 4}}]) is None
    assert max_time_limit_minutes({}, []) is None


def test_current_limit_prefers_the_last_extension() -> None:
    job_type = {"environment_details": {"main_resource": {"time_limit_seconds": "4"}}}
    assert current_limit_seconds({"time_limit_minutes": 1}, job_type, "main_resource") == 4
    assert current_limit_seconds({"time_limit_seconds": 64}, job_type, "main_resource") == 64
    assert current_limit_seconds({"time_limit_minutes": 30}, {}, "main_resource") == 1800
    assert current_limit_seconds({}, {}, "main_resource") is None


def test_helper_told_again_only_when_it_reports_another_limit() -> None:
    def beat(phase: str, limit: Any) -> dict[str, Any]:
        return {"type": "heartbeat", "state": {"phase": phase, "time_limit_seconds": limit}}

    assert state_limit_differs(beat("running", 4), 64)
    assert state_limit_differs(beat("ready", 4), 64)
    assert not state_limit_differs(beat("ready", 64), 64)
    assert not state_limit_differs(beat("exited", 4), 64)  # too late to matter
    assert not state_limit_differs(beat("running", None), 64)  # the scheduler keeps it
    assert not state_limit_differs({"type": "progress", "message": "x"}, 64)
