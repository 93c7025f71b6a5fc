"""Worker pools: own threads and processes, accept, park idle connections, scale, reload, stop."""

from __future__ import annotations

from fcgiserve.pools.base import (
    ConnectionFactory,
    PoolSettings,
    RequestObserver,
    ServedConnection,
    StopReason,
)

__all__ = [
    "ConnectionFactory",
    "PoolSettings",
    "RequestObserver",
    "ServedConnection",
    "StopReason",
]
