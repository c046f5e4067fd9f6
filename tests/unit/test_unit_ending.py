"""uws/sessions/ending.py in process: which `ending_soon` threshold is due, given the time left
and what was sent before."""

from __future__ import annotations

from uws.sessions.ending import due_thresholds

T = [300, 900]  # 5 and 15 minutes


def test_first_look_takes_passed_thresholds_as_the_start() -> None:
    assert due_thresholds(3600, T, None) == ([], None)
    assert due_thresholds(600, T, None) == ([900], None)  # a 10-minute session: no 15-minute warning
    assert due_thresholds(100, T, None) == ([300, 900], None)


def test_each_threshold_once_and_the_nearest_when_several_pass() -> None:
    assert due_thresholds(901, T, []) == ([], None)
    assert due_thresholds(900, T, []) == ([900], 900)
    assert due_thresholds(850, T, [900]) == ([900], None)
    assert due_thresholds(299, T, [900]) == ([300, 900], 300)
    assert due_thresholds(250, T, [300, 900]) == ([300, 900], None)
    assert due_thresholds(200, T, []) == ([300, 900], 300)  # both at once: one warning


def test_more_time_arms_a_threshold_again() -> None:
    assert due_thresholds(930, T, [900]) == ([900], None)  # within the margin: time_left wobbles
    assert due_thresholds(961, T, [300, 900]) == ([], None)  # extended: both armed again
    assert due_thresholds(899, T, []) == ([900], 900)


def test_thresholds_no_longer_configured_are_dropped() -> None:
    assert due_thresholds(100, [300], [300, 900]) == ([300], None)
