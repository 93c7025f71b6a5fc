"""A prefork master over the line protocol, run by tests/pools/test_prefork.py as a subprocess.

    python -m tests.pools.prefork_master --fd N --settings '{"min_spare": 1, ...}' [--boot-control PATH]
                                         [--in-thread] [--no-pdeathsig]

The listening socket is inherited as fd N, so the test knows its address before the master starts.
Every accepted connection is greeted with ``PID <child pid>`` so that a test knows which child holds
it. When ``--boot-control`` names a file that contains ``fail``, make_factory() raises (as a broken
application import would). SIGUSR1 logs ``REOPEN <pid>`` in the master and in each child, and the
master also logs ``STATS <json>`` with ``PreforkPool.stats()``.

``--in-thread`` runs the pool as a library user would: ``run(install_signals=False)`` in a thread
that is not the main one, while the main thread turns TERM / QUIT / HUP into ``request_stop()`` /
``request_stop(graceful=False)`` / ``request_reload()``. ``--no-pdeathsig`` leaves children with only
the lifeline pipe to notice that the master died (the path other systems than Linux take).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from fcgiserve.pools import child
from fcgiserve.pools.base import PoolSettings, ServedConnection
from fcgiserve.pools.prefork import PoolExit, PreforkPool
from tests.pools.lineproto import LineFactory

log = logging.getLogger("prefork_master")


class GreetingFactory(LineFactory):
    def open(self, sock: socket.socket, peer: Any) -> ServedConnection | None:
        sock.sendall(f"PID {os.getpid()}\n".encode())
        return super().open(sock, peer)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--boot-control", type=Path)
    parser.add_argument("--in-thread", action="store_true")
    parser.add_argument("--no-pdeathsig", action="store_true")
    parser.add_argument("--pin-cpu", type=int, help="run the master and its children on this CPU only")
    args = parser.parse_args()
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, {args.pin_cpu})
    if args.no_pdeathsig:
        child._die_with_parent = lambda: None
    logging.basicConfig(  # DEBUG: a failing test shows every fork, exit and retirement, timed
        level=logging.DEBUG,
        stream=sys.stderr,
        format="%(relativeCreated)d %(process)d %(levelname)s %(name)s: %(message)s",
    )
    listener = socket.socket(fileno=args.fd)
    master_pid = os.getpid()
    boot_control: Path | None = args.boot_control

    def make_factory() -> GreetingFactory:
        if boot_control is not None and boot_control.read_text().strip() == "fail":
            raise ImportError("the test application cannot be imported")
        return GreetingFactory()

    def on_reopen_logs() -> None:
        log.info("REOPEN %d", os.getpid())
        if os.getpid() == master_pid:
            log.info("STATS %s", json.dumps(pool.stats()))

    pool = PreforkPool([listener], make_factory, PoolSettings(**json.loads(args.settings)), on_reopen_logs)
    if args.in_thread:
        return run_in_thread(pool)
    try:
        reason = pool.run()
    except PoolExit as exc:
        log.info("EXIT %d", exc.status)
        return exc.status
    log.info("RETURNED %s", reason.value)
    return 0


def run_in_thread(pool: PreforkPool) -> int:
    outcome: list[str] = []

    def serve() -> None:
        outcome.append(pool.run(install_signals=False).value)

    signal.signal(signal.SIGTERM, lambda signum, frame: pool.request_stop())
    signal.signal(signal.SIGQUIT, lambda signum, frame: pool.request_stop(graceful=False))
    signal.signal(signal.SIGHUP, lambda signum, frame: pool.request_reload())
    thread = threading.Thread(target=serve, name="pool")
    thread.start()
    while thread.is_alive():
        thread.join(0.05)  # short joins: the main thread must get back to running signal handlers
    log.info("RETURNED %s (thread)", outcome[0] if outcome else "nothing")
    return 0 if outcome else 1


if __name__ == "__main__":
    raise SystemExit(main())
