"""The transition table of state.py against a real ServerConnection: every (state, input) pair, and walks."""

from __future__ import annotations

import runpy
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgiserve.protocol import (
    ConnectionSettings,
    LocalProtocolError,
    RequestFailed,
    RequestRejected,
    RequestState,
    ServerConnection,
)
from fcgiserve.protocol import state as state_module
from fcgiserve.protocol.state import (
    ANNOUNCED,
    LOCAL_INPUTS,
    ON_PEER_VIOLATION,
    PEER_INPUTS,
    TRANSITIONS,
    UNANNOUNCED,
    RequestInput,
    render_mermaid,
)

from . import wire

S, In = RequestState, RequestInput
RID = 1

# Raw records (or API calls) that reach each state for request RID from a fresh connection.
REACH: dict[RequestState, bytes] = {
    S.IDLE: b"",
    S.PARAMS: wire.begin(RID) + wire.rec(wire.PARAMS, RID, wire.pair(b"A", b"1")),
    S.FILTER_PARAMS: wire.begin(RID, wire.FILTER),
    S.STDIN: wire.begin(RID) + wire.params(RID, []),
    S.FILTER_STDIN: wire.begin(RID, wire.FILTER) + wire.params(RID, []),
    S.DATA: wire.begin(RID, wire.FILTER) + wire.params(RID, []) + wire.stdin(RID),
    S.INPUT_DONE: wire.simple_get(RID),
    S.FILTER_INPUT_DONE: wire.begin(RID, wire.FILTER)
    + wire.params(RID, [])
    + wire.stdin(RID)
    + wire.rec(wire.DATA, RID),
    S.ABORTED: wire.simple_get(RID) + wire.rec(wire.ABORT_REQUEST, RID),
    S.FAILED: wire.simple_get(RID) + wire.stdin(RID, b"after the end"),
}

PEER_RECORDS: dict[RequestInput, bytes] = {
    In.BEGIN: wire.begin(RID),
    In.BEGIN_FILTER: wire.begin(RID, wire.FILTER),
    In.PARAMS: wire.rec(wire.PARAMS, RID, wire.pair(b"B", b"2")),
    In.PARAMS_END: wire.rec(wire.PARAMS, RID),
    In.STDIN: wire.stdin(RID, b"in"),
    In.STDIN_END: wire.stdin(RID),
    In.DATA: wire.rec(wire.DATA, RID, b"data"),
    In.DATA_END: wire.rec(wire.DATA, RID),
    In.ABORT: wire.rec(wire.ABORT_REQUEST, RID),
}
LOCAL_CALLS: dict[RequestInput, Callable[[ServerConnection], bytes]] = {
    In.SEND_OUTPUT: lambda conn: conn.send_stdout(RID, b"out"),
    In.END: lambda conn: conn.end_request(RID),
}


def reach(state: RequestState) -> ServerConnection:
    conn = ServerConnection(ConnectionSettings(mpxs_conns=True))
    if REACH[state]:
        conn.receive_data(REACH[state])
    assert conn.request_state(RID) is state
    conn.data_to_send()
    return conn


def apply(conn: ServerConnection, request_input: RequestInput) -> list[object]:
    """Apply one input; return the events (peer input) or [] (local input)."""
    if request_input in PEER_INPUTS:
        return list(conn.receive_data(PEER_RECORDS[request_input]))
    LOCAL_CALLS[request_input](conn)
    return []


def test_the_table_covers_known_states_and_inputs_only() -> None:
    assert set(RequestInput) == PEER_INPUTS | LOCAL_INPUTS
    assert not PEER_INPUTS & LOCAL_INPUTS
    assert UNANNOUNCED | ANNOUNCED | {S.IDLE} == set(RequestState)
    for (state, request_input), (next_state, act) in TRANSITIONS.items():
        assert isinstance(state, RequestState) and isinstance(request_input, RequestInput)
        assert isinstance(next_state, RequestState)
        if not act:
            assert next_state is state, "an ignored input must not move the request"
    # Every peer input has an answer in every state: a transition, or a violation destination.
    for state in RequestState:
        for request_input in PEER_INPUTS:
            assert (state, request_input) in TRANSITIONS or state in ON_PEER_VIOLATION


@pytest.mark.parametrize("state", list(RequestState), ids=lambda s: s.name)
@pytest.mark.parametrize("request_input", list(RequestInput), ids=lambda i: i.name)
def test_every_state_input_pair_moves_legally_or_raises(
    state: RequestState, request_input: RequestInput
) -> None:
    conn = reach(state)
    transition = TRANSITIONS.get((state, request_input))
    if transition is not None:
        events = apply(conn, request_input)
        assert conn.request_state(RID) is transition.next_state
        if not transition.act:
            assert events == [] and conn.data_to_send() == b""
    elif request_input in LOCAL_INPUTS:
        with pytest.raises(LocalProtocolError):
            apply(conn, request_input)
        assert conn.request_state(RID) is state
    else:
        events = apply(conn, request_input)
        expected = ON_PEER_VIOLATION[state]
        assert conn.request_state(RID) is expected
        kind = RequestRejected if expected is S.IDLE else RequestFailed
        assert len(events) == 1 and isinstance(events[0], kind)
        error = events[0].error
        assert error is not None and error.request_id == RID and request_input.value in str(error)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(list(RequestInput)), max_size=25))
def test_random_walks_follow_the_table(inputs: list[RequestInput]) -> None:
    conn = ServerConnection(ConnectionSettings(mpxs_conns=True))
    model = S.IDLE
    for request_input in inputs:
        transition = TRANSITIONS.get((model, request_input))
        if transition is not None:
            apply(conn, request_input)
            model = transition.next_state
        elif request_input in LOCAL_INPUTS:
            with pytest.raises(LocalProtocolError):
                apply(conn, request_input)
        else:
            apply(conn, request_input)
            model = ON_PEER_VIOLATION[model]
        assert conn.request_state(RID) is model
        assert conn.active_requests == (0 if model is S.IDLE else 1)


def test_mermaid_diagram_is_generated_from_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    diagram = render_mermaid()
    assert diagram.startswith("stateDiagram-v2")
    acting = [key for key, transition in TRANSITIONS.items() if transition.act]
    for state, request_input in acting:
        assert (
            f"{state.name} --> {TRANSITIONS[(state, request_input)].next_state.name}: {request_input.name}"
            in (diagram)
        )
    runpy.run_path(state_module.__file__ or "", run_name="__main__")  # python -m fcgiserve.protocol.state
    assert capsys.readouterr().out.strip() == diagram


def test_docs_show_the_current_diagram() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
    assert f"```mermaid\n{render_mermaid()}\n```" in doc.read_text(encoding="utf-8")
