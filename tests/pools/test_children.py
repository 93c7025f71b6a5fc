"""The master's crash back-off and exit wording (pools/children.py), without forking."""

from __future__ import annotations

import logging
import signal

import pytest

from fcgiserve.pools.children import (
    CRASH_LIMIT,
    CRASH_WINDOW,
    MAX_BACKOFF,
    MAX_SPAWN_BATCH,
    CrashBackoff,
    SpawnPlan,
    describe_exit,
)


def test_crashes_below_the_limit_do_not_pause_forking() -> None:
    backoff = CrashBackoff()
    for i in range(CRASH_LIMIT - 1):
        backoff.note_crash(100.0 + i * 0.1)
    assert backoff.paused_until == 0.0


def test_the_pause_doubles_while_crashes_keep_coming_and_is_capped() -> None:
    backoff = CrashBackoff()
    now = 100.0
    pauses = []
    for _ in range(8):
        for _ in range(CRASH_LIMIT):
            now += 0.01
            backoff.note_crash(now)
        pauses.append(backoff.paused_until - now)
    assert pauses[:3] == [1.0, 2.0, 4.0]
    assert max(pauses) == MAX_BACKOFF


def test_a_quiet_spell_resets_the_escalation() -> None:
    backoff = CrashBackoff()
    now = 100.0
    for _ in range(2 * CRASH_LIMIT):
        now += 0.01
        backoff.note_crash(now)
    assert backoff.paused_until - now == 2.0
    now += CRASH_WINDOW + 1
    for _ in range(CRASH_LIMIT):
        now += 0.01
        backoff.note_crash(now)
    assert backoff.paused_until - now == 1.0


def test_crashes_spread_wider_than_the_window_never_pause() -> None:
    backoff = CrashBackoff()
    for i in range(5 * CRASH_LIMIT):
        backoff.note_crash(100.0 + i * (CRASH_WINDOW / (CRASH_LIMIT - 1) + 0.01))
    assert backoff.paused_until == 0.0


def test_exits_read_as_words() -> None:
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-200) == "signal 200"


def test_forks_ramp_up_while_the_pool_stays_short_and_restart_from_one() -> None:
    plan = SpawnPlan()
    counts = [
        plan.count(serving=2, deficit=1, max_children=1000, min_spare=1, paused=False) for _ in range(8)
    ]
    assert counts == [1, 2, 4, 8, 16, 32, MAX_SPAWN_BATCH, MAX_SPAWN_BATCH]
    plan.restart()  # min_spare idle again
    assert plan.count(serving=2, deficit=1, max_children=1000, min_spare=1, paused=False) == 1
    # A larger deficit is forked at once, whatever the ramp says.
    assert plan.count(serving=2, deficit=5, max_children=1000, min_spare=5, paused=False) == 5


def test_forks_stop_at_max_children() -> None:
    plan = SpawnPlan()
    assert plan.count(serving=3, deficit=4, max_children=5, min_spare=4, paused=False) == 2
    assert not plan.at_max and plan.reached == 0


def test_a_paused_plan_forks_nothing_and_keeps_its_ramp() -> None:
    plan = SpawnPlan()
    assert plan.count(serving=1, deficit=1, max_children=10, min_spare=1, paused=False) == 1
    assert plan.count(serving=2, deficit=1, max_children=10, min_spare=1, paused=True) == 0
    assert plan.count(serving=2, deficit=1, max_children=10, min_spare=1, paused=False) == 2


def test_max_children_counts_episodes_and_warns_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    plan = SpawnPlan()
    with caplog.at_level(logging.WARNING, logger="fcgiserve.pools"):
        assert plan.count(serving=4, deficit=1, max_children=4, min_spare=1, paused=False) == 0
        assert plan.at_max and plan.just_reached and plan.reached == 1
        assert plan.count(serving=4, deficit=1, max_children=4, min_spare=1, paused=False) == 0
        assert not plan.just_reached and plan.reached == 1  # the same episode
        plan.restart()
        plan.count(serving=4, deficit=1, max_children=4, min_spare=1, paused=False)
        assert plan.just_reached and plan.reached == 2  # a new episode, not logged again within the minute
    warnings = [r.getMessage() for r in caplog.records if "reached max_children" in r.getMessage()]
    assert warnings == [
        "server reached max_children (4) with fewer than min_spare (1) idle children (1 time(s) since the "
        "last report); consider raising max_children or threads_per_child"
    ]
