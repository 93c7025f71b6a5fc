"""The master's crash back-off and exit wording (pools/children.py), without forking."""

from __future__ import annotations

import signal

from fcgiserve.pools.children import CRASH_LIMIT, CRASH_WINDOW, MAX_BACKOFF, CrashBackoff, describe_exit


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
