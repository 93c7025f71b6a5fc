"""A prefork master over the line protocol, run by tests/pools/test_prefork.py as a subprocess.

    python -m tests.pools.prefork_master --fd N --settings '{"min_spare": 1, ...}' [--boot-control PATH]

The listening socket is inherited as fd N, so the test knows its address before the master starts.
Every accepted connection is greeted with ``PID <child pid>`` so that a test knows which child holds
it. When ``--boot-control`` names a file that contains ``fail``, make_factory() raises (as a broken
application import would). SIGUSR1 logs ``REOPEN <pid>`` in the master and in each child, and the
master also logs ``STATS <json>`` with ``PreforkPool.stats()``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

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
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("PREFORK_LOG_LEVEL", "DEBUG"), stream=sys.stderr, format="%(relativeCreated)d %(process)d %(levelname)s %(name)s: %(message)s"
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
    try:
        reason = pool.run()
    except PoolExit as exc:
        log.info("EXIT %d", exc.status)
        return exc.status
    log.info("RETURNED %s", reason.value)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
