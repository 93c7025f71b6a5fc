"""One live server per module and method: starting a process per case would cost most of the time budget."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.peer import Live, live_server


@pytest.fixture(scope="module", params=["threaded", "prefork"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    method = str(request.param)
    with live_server(method, tmp_path_factory.mktemp(method)) as server:
        yield server
