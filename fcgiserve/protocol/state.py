"""Per-request state of a FastCGI server connection: one Enum, one (state, input) -> transition table.

This file is the only place request transitions live. It knows the FastCGI input streams and the calls our
own code makes; it knows nothing about bytes, records or events. ``connection.py`` looks every step up here:
a pair that is missing from ``TRANSITIONS`` is a protocol violation — by the peer for a ``PEER_INPUTS`` input
(``RemoteProtocolError``), by our code for a ``LOCAL_INPUTS`` input (``LocalProtocolError``).

Ownership (see docs/protocol.md): while a request is in an ``UNANNOUNCED`` state (its PARAMS are still
arriving) the layer owns it and answers every problem itself. Once PARAMS end, the caller is told
(RequestStarted + ParamsComplete) and owns the request until it sends END_REQUEST.

``python -m fcgiserve.protocol.state`` prints the table as a mermaid diagram.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

__all__ = [
    "ANNOUNCED",
    "LOCAL_INPUTS",
    "ON_PEER_VIOLATION",
    "PEER_INPUTS",
    "TRANSITIONS",
    "UNANNOUNCED",
    "RequestInput",
    "RequestState",
    "Transition",
    "render_mermaid",
]


class RequestState(Enum):
    """Where one request id stands. IDLE = not active (never begun, or END_REQUEST already sent)."""

    IDLE = "not active"
    PARAMS = "reading PARAMS (RESPONDER or AUTHORIZER)"
    FILTER_PARAMS = "reading PARAMS (FILTER)"
    STDIN = "reading STDIN"
    FILTER_STDIN = "reading STDIN (FILTER, DATA follows)"
    DATA = "reading DATA (FILTER)"
    INPUT_DONE = "all input streams ended (RESPONDER or AUTHORIZER)"
    FILTER_INPUT_DONE = "all input streams ended (FILTER)"
    ABORTED = "aborted by the peer, waiting for END_REQUEST"
    FAILED = "failed by a peer violation, waiting for END_REQUEST"

    # Members are singletons: identity hashing keeps the table lookups on the hot path in C (Enum's own
    # __hash__ is Python code).
    __hash__ = object.__hash__


class RequestInput(Enum):
    """What can happen to a request: a record from the peer, or a call from our own code."""

    BEGIN = "BEGIN_REQUEST (RESPONDER or AUTHORIZER)"
    BEGIN_FILTER = "BEGIN_REQUEST (FILTER)"
    PARAMS = "PARAMS data"
    PARAMS_END = "the empty PARAMS record"
    STDIN = "STDIN data"
    STDIN_END = "the empty STDIN record"
    DATA = "DATA data"
    DATA_END = "the empty DATA record"
    ABORT = "ABORT_REQUEST (or peer EOF)"
    SEND_OUTPUT = "send_stdout / send_stderr"
    END = "end_request / reject_request"

    __hash__ = object.__hash__


class Transition(NamedTuple):
    """``act`` False means the input is legal but ignored (records for inactive, aborted or failed ids)."""

    next_state: RequestState
    act: bool


S = RequestState
I = RequestInput  # noqa: E741 - the table below reads as a grid with short names

PEER_INPUTS = frozenset({I.BEGIN, I.BEGIN_FILTER, I.PARAMS, I.PARAMS_END, I.STDIN, I.STDIN_END, I.DATA,
                         I.DATA_END, I.ABORT})  # fmt: skip
LOCAL_INPUTS = frozenset({I.SEND_OUTPUT, I.END})
UNANNOUNCED = frozenset({S.PARAMS, S.FILTER_PARAMS})
ANNOUNCED = frozenset(
    {S.STDIN, S.FILTER_STDIN, S.DATA, S.INPUT_DONE, S.FILTER_INPUT_DONE, S.ABORTED, S.FAILED}
)


def _ignore_peer(state: RequestState) -> dict[tuple[RequestState, RequestInput], Transition]:
    # Definition order, not set order (identity hashes vary per run): the diagram must be reproducible.
    return {(state, peer_input): Transition(state, False) for peer_input in I if peer_input in PEER_INPUTS}


TRANSITIONS: dict[tuple[RequestState, RequestInput], Transition] = {
    # S-D2: an inactive id ignores every record except BEGIN_REQUEST.
    **_ignore_peer(S.IDLE),
    (S.IDLE, I.BEGIN): Transition(S.PARAMS, True),
    (S.IDLE, I.BEGIN_FILTER): Transition(S.FILTER_PARAMS, True),
    # S-F2: PARAMS first; dispatch may begin at the empty PARAMS record. An abort before that is answered by
    # the layer itself (the caller never heard of the request).
    (S.PARAMS, I.PARAMS): Transition(S.PARAMS, True),
    (S.PARAMS, I.PARAMS_END): Transition(S.STDIN, True),
    (S.PARAMS, I.ABORT): Transition(S.IDLE, True),
    (S.FILTER_PARAMS, I.PARAMS): Transition(S.FILTER_PARAMS, True),
    (S.FILTER_PARAMS, I.PARAMS_END): Transition(S.FILTER_STDIN, True),
    (S.FILTER_PARAMS, I.ABORT): Transition(S.IDLE, True),
    # S-F3 / S-G1: the body. A responder may write before STDIN ends (S-F5).
    (S.STDIN, I.STDIN): Transition(S.STDIN, True),
    (S.STDIN, I.STDIN_END): Transition(S.INPUT_DONE, True),
    (S.STDIN, I.ABORT): Transition(S.ABORTED, True),
    (S.STDIN, I.SEND_OUTPUT): Transition(S.STDIN, True),
    (S.STDIN, I.END): Transition(S.IDLE, True),
    # S-G3 gives DATA to FILTER only. A RESPONDER or AUTHORIZER that receives it anyway (some clients send an
    # empty DATA stream to every role) keeps going, as in flup and libfcgi: the records, before or after its
    # STDIN ended, are handed to the caller as Data / DataEnd, which it drops (and may log). PARAMS still come
    # first (S-F2): DATA while PARAMS arrive stays a violation, like STDIN.
    (S.STDIN, I.DATA): Transition(S.STDIN, True),
    (S.STDIN, I.DATA_END): Transition(S.STDIN, True),
    # S-G3: a FILTER gets STDIN, then DATA.
    (S.FILTER_STDIN, I.STDIN): Transition(S.FILTER_STDIN, True),
    (S.FILTER_STDIN, I.STDIN_END): Transition(S.DATA, True),
    (S.FILTER_STDIN, I.ABORT): Transition(S.ABORTED, True),
    (S.FILTER_STDIN, I.SEND_OUTPUT): Transition(S.FILTER_STDIN, True),
    (S.FILTER_STDIN, I.END): Transition(S.IDLE, True),
    (S.DATA, I.DATA): Transition(S.DATA, True),
    (S.DATA, I.DATA_END): Transition(S.FILTER_INPUT_DONE, True),
    (S.DATA, I.ABORT): Transition(S.ABORTED, True),
    (S.DATA, I.SEND_OUTPUT): Transition(S.DATA, True),
    (S.DATA, I.END): Transition(S.IDLE, True),
    (S.INPUT_DONE, I.DATA): Transition(S.INPUT_DONE, True),
    (S.INPUT_DONE, I.DATA_END): Transition(S.INPUT_DONE, True),
    (S.INPUT_DONE, I.ABORT): Transition(S.ABORTED, True),
    (S.INPUT_DONE, I.SEND_OUTPUT): Transition(S.INPUT_DONE, True),
    (S.INPUT_DONE, I.END): Transition(S.IDLE, True),
    (S.FILTER_INPUT_DONE, I.ABORT): Transition(S.ABORTED, True),
    (S.FILTER_INPUT_DONE, I.SEND_OUTPUT): Transition(S.FILTER_INPUT_DONE, True),
    (S.FILTER_INPUT_DONE, I.END): Transition(S.IDLE, True),
    # S-F7: after an abort or a failure the caller still sends exactly one END_REQUEST (S-D7); until then the
    # id stays active, so the peer cannot reuse it under a running app, and its records are ignored.
    **_ignore_peer(S.ABORTED),
    (S.ABORTED, I.SEND_OUTPUT): Transition(S.ABORTED, True),
    (S.ABORTED, I.END): Transition(S.IDLE, True),
    **_ignore_peer(S.FAILED),
    (S.FAILED, I.SEND_OUTPUT): Transition(S.FAILED, True),
    (S.FAILED, I.END): Transition(S.IDLE, True),
}

# Where a peer violation (a PEER_INPUTS pair missing from TRANSITIONS) leaves the request: the layer
# answers an unannounced request itself (END_REQUEST, id inactive); an announced one waits for the caller.
ON_PEER_VIOLATION: dict[RequestState, RequestState] = {
    S.PARAMS: S.IDLE,
    S.FILTER_PARAMS: S.IDLE,
    S.STDIN: S.FAILED,
    S.FILTER_STDIN: S.FAILED,
    S.DATA: S.FAILED,
    S.INPUT_DONE: S.FAILED,
    S.FILTER_INPUT_DONE: S.FAILED,
}


def render_mermaid() -> str:
    """The transition table as a mermaid state diagram (acting transitions only; ignored inputs noted)."""
    lines = ["stateDiagram-v2", "    [*] --> IDLE"]
    for (state, request_input), (next_state, act) in TRANSITIONS.items():
        if act:
            lines.append(f"    {state.name} --> {next_state.name}: {request_input.name}")
    lines.append("    note right of IDLE: records other than BEGIN_REQUEST ignored (S-D2)")
    for state in (S.ABORTED, S.FAILED):
        lines.append(f"    note right of {state.name}: peer records ignored until END_REQUEST")
    for state, next_state in ON_PEER_VIOLATION.items():
        lines.append(f"    {state.name} --> {next_state.name}: peer violation")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_mermaid())
