"""Random record sequences against the live server (threaded and prefork), bounded in examples and time.

Each example opens a connection, sends a sequence of records drawn from every type, id, version, padding
and body shape (valid ones weighted up, so that requests get far into their life before breaking), half-closes
and reads. The server must hang up after our EOF (never hang), answer each request at most once (S-D7),
never die; after the run a good request succeeds and memory is bounded.
"""

from __future__ import annotations

import struct
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.peer import BEGIN, END, PARAMS, STDIN, Live, get_params, pair, parse, record

TIME_BUDGET = 8.0  # seconds per method; examples past it are skipped cheaply

_valid_params = b"".join(pair(k.encode(), v.encode()) for k, v in get_params("/echo").items())


@st.composite
def _record(draw: st.DrawFn) -> bytes:
    rid = draw(st.sampled_from([1, 1, 1, 2, 0, 65535]))
    kind = draw(st.sampled_from(["begin", "params", "params_end", "stdin", "stdin_end", "any"]))
    version = draw(st.sampled_from([1] * 12 + [0, 2, 255]))
    padding = draw(st.integers(0, 9))
    if kind == "begin":
        role = draw(st.sampled_from([1, 1, 2, 3, 0, 9]))
        content = struct.pack("!HB5x", role, draw(st.integers(0, 3)))
        return record(BEGIN, rid, content, version=version, padding=padding)
    if kind == "params":
        cut = draw(st.integers(0, len(_valid_params)))
        return record(
            PARAMS, rid, draw(st.sampled_from([_valid_params, _valid_params[:cut]])), version=version
        )
    if kind in ("params_end", "stdin_end"):
        return record(PARAMS if kind == "params_end" else STDIN, rid, version=version, padding=padding)
    if kind == "stdin":
        return record(STDIN, rid, draw(st.binary(max_size=300)), version=version, padding=padding)
    rtype = draw(st.integers(0, 13))
    return record(rtype, rid, draw(st.binary(max_size=40)), version=version, padding=padding)


_sequence = st.lists(_record(), min_size=1, max_size=12).map(b"".join)
_tail = st.sampled_from([b"", b"\x01", b"\x01\x05\x00\x01\xff\xff"])  # sometimes a torn header at the end


def test_fuzz_random_record_sequences(live: Live) -> None:
    started = time.monotonic()
    runs = []

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(_sequence, _tail)
    def run(data: bytes, tail: bytes) -> None:
        if time.monotonic() - started > TIME_BUDGET:
            return
        out, closed = live.exchange(data + tail, timeout=5.0, shut=True)
        begun = Counter(rid for rtype, rid, _ in parse(data) if rtype == BEGIN)
        ended = Counter(rid for rtype, rid, _ in parse(out) if rtype == END)
        # S-D7: one END_REQUEST per request; an id may be reused once its request ended (S-D2).
        assert all(ended[rid] <= begun[rid] for rid in ended), (ended, begun)
        assert closed, f"the server did not hang up after our EOF; sent {data[:80]!r}"
        assert live.server.proc.poll() is None, live.server.log()[-3000:]
        runs.append(len(data))

    run()
    assert len(runs) >= 30, f"only {len(runs)} examples ran within {TIME_BUDGET}s"
    live.check()
    live.check("/echo")
