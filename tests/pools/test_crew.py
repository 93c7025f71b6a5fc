"""The dispatcher's thread bookkeeping (pools/crew.py): who leads, who follows, when a spare may leave."""

from __future__ import annotations

import threading
import time

from fcgiserve.pools.crew import Crew, ThreadRole


def _gate() -> threading.Lock:
    gate = threading.Lock()
    gate.acquire()
    return gate


def _started(crew: Crew) -> list[threading.Lock]:
    """Start the spares the crew asks for and let each take its place; their gates, followers only."""
    gates = []
    for _ in range(crew.reserve_spares()):
        gate = _gate()
        if not crew.join(gate):
            gates.append(gate)
    return gates


def test_min_spare_is_at_least_one_and_max_spare_at_least_min_spare() -> None:
    crew = Crew(min_spare=0, max_spare=0, max_threads=4, spare_idle_time=1.0)
    assert (crew.min_spare, crew.max_spare) == (1, 1)
    crew = Crew(min_spare=8, max_spare=9, max_threads=3, spare_idle_time=1.0)
    assert (crew.min_spare, crew.max_spare) == (3, 3)


def test_start_up_reserves_min_spare_and_exactly_one_leads() -> None:
    crew = Crew(min_spare=3, max_spare=5, max_threads=10, spare_idle_time=1.0)
    followers = _started(crew)
    assert (crew.threads, crew.idle, crew.busy) == (3, 3, 0)
    assert crew.leader and len(followers) == 2 and crew.followers == followers
    assert crew.reserve_spares() == 0


def test_reserve_spares_never_passes_max_threads() -> None:
    crew = Crew(min_spare=4, max_spare=4, max_threads=2, spare_idle_time=1.0)
    assert crew.reserve_spares() == 2
    assert crew.reserve_spares() == 0


def test_a_leader_that_takes_a_job_wakes_nobody_and_leads_again_after_it() -> None:
    crew = Crew(min_spare=2, max_spare=2, max_threads=4, spare_idle_time=1.0)
    followers = _started(crew)
    crew.begin_job(now=5.0)
    assert not crew.leader and crew.leaderless_since == 5.0
    assert crew.followers == followers and not followers[0].acquire(blocking=False)  # nobody was woken
    crew.end_job()
    assert crew.rejoin(_gate()) is ThreadRole.LEAD
    assert crew.leader and (crew.idle, crew.busy) == (2, 0)


def test_promote_wakes_the_most_recently_idle_follower() -> None:
    crew = Crew(min_spare=3, max_spare=3, max_threads=4, spare_idle_time=1.0)
    first, last = _started(crew)
    crew.begin_job(now=1.0)
    assert crew.promote() is False  # a follower leads now: no thread to start
    assert crew.leader and crew.followers == [first]
    assert last.acquire(blocking=False) and not first.acquire(blocking=False)


def test_promote_asks_for_a_new_thread_when_nobody_follows_and_room_is_left() -> None:
    crew = Crew(min_spare=1, max_spare=1, max_threads=2, spare_idle_time=1.0)
    _started(crew)
    crew.begin_job(now=1.0)
    assert crew.can_promote()
    assert crew.promote() is True and crew.leader and (crew.threads, crew.idle) == (2, 1)
    crew.begin_job(now=2.0)  # the new thread takes a job too: the pool is full
    assert not crew.can_promote()
    assert crew.promote() is False and not crew.leader  # the next thread to finish leads


def test_a_thread_back_from_a_job_follows_when_another_leads() -> None:
    crew = Crew(min_spare=1, max_spare=2, max_threads=4, spare_idle_time=1.0)
    _started(crew)
    crew.begin_job(now=1.0)
    crew.promote()  # a new thread leads
    crew.end_job()
    gate = _gate()
    assert crew.rejoin(gate) is ThreadRole.FOLLOW and crew.followers == [gate]
    crew.unfollow(gate)
    assert crew.followers == []


def test_a_surplus_spare_retires_only_after_spare_idle_time_unneeded() -> None:
    crew = Crew(min_spare=1, max_spare=1, max_threads=4, spare_idle_time=0.2)
    _started(crew)
    crew.begin_job(now=time.monotonic())  # idle 0 <= max_spare: spares were needed just now
    crew.promote()
    crew.end_job()  # two idle threads, max_spare 1
    assert crew.rejoin(_gate()) is ThreadRole.FOLLOW  # needed moments ago: stays
    crew.followers.clear()
    time.sleep(0.25)
    assert crew.surplus_spare()
    assert crew.rejoin(_gate()) is ThreadRole.RETIRE
    crew.retire()
    assert (crew.threads, crew.idle) == (1, 1)


def test_release_followers_opens_every_gate() -> None:
    crew = Crew(min_spare=3, max_spare=3, max_threads=3, spare_idle_time=1.0)
    followers = _started(crew)
    crew.release_followers()
    assert crew.followers == [] and all(gate.acquire(blocking=False) for gate in followers)


def test_threads_the_system_refused_are_uncounted_and_no_more_are_asked_for_a_while() -> None:
    """A refused start (RLIMIT_NPROC or RLIMIT_AS, pids.max): the crew stops counting those threads, nobody
    leads if the first was to, and the ceiling holds at what runs until it lifts."""
    crew = Crew(min_spare=3, max_spare=5, max_threads=10, spare_idle_time=1.0)
    assert crew.reserve_spares() == 3 and crew.lead_if_unled()
    crew.not_started(2, led=False, until=100.0)  # the first started, two did not
    assert (crew.threads, crew.idle, crew.leader) == (1, 1, True)
    assert crew.reserve_spares() == 0 and not crew.can_promote()
    crew.begin_job(0.0)
    assert crew.promote() is False and not crew.leader, "no new thread: the next one back leads"
    crew.lift_ceiling(99.0)
    assert crew.ceiling == 1
    crew.lift_ceiling(100.0)
    assert (crew.ceiling, crew.ceiling_until) == (10, 0.0)
    assert crew.reserve_spares() == 3 and crew.can_promote()


def test_a_refused_leader_leaves_the_pool_leaderless() -> None:
    crew = Crew(min_spare=1, max_spare=1, max_threads=4, spare_idle_time=1.0)
    assert crew.reserve_spares() == 1 and crew.lead_if_unled()
    crew.not_started(1, led=True, until=5.0)
    assert (crew.threads, crew.idle, crew.leader, crew.ceiling) == (0, 0, False, 0)
    assert crew.reserve_spares() == 0
