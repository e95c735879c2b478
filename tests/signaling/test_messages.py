"""``signaling.messages.parse``: every client message type, and the exact error code a client
gets for each kind of bad input. Pure: no loop, no socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.signaling import messages
from parley.signaling.errors import SignalingError
from parley.signaling.messages import Answer, End, Join, Leave, MediaCheck, Offer


def text(data: Any) -> str:
    return json.dumps(data)


def test_join_with_and_without_a_name() -> None:
    assert messages.parse(text({"type": "join", "token": "t", "name": "Ann"})) == Join("t", "Ann")
    assert messages.parse(text({"type": "join", "token": "t"})) == Join("t", "")


def test_offer_answer_leave_end() -> None:
    offer = {"type": "offer", "pc": "publish", "sdp": "v=0\r\n", "sources": {"0": "camera"}}
    assert messages.parse(text(offer)) == Offer("publish", "v=0\r\n", {"0": "camera"})
    no_sources = {"type": "offer", "pc": "publish", "sdp": " v=0"}
    assert messages.parse(text(no_sources)) == Offer("publish", " v=0", {})
    answer = {"type": "answer", "pc": "subscribe", "sdp": "v=0"}
    assert messages.parse(text(answer)) == Answer("subscribe", "v=0")
    assert messages.parse(text({"type": "leave"})) == Leave()
    assert messages.parse(b'{"type": "end"}') == End()
    # extra fields are ignored, as for every message
    assert messages.parse(text({"type": "media_check", "x": 1})) == MediaCheck()


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        ("{nope", "invalid_json", "the message is not valid JSON"),
        (b"\xff\xfe", "invalid_json", "the message is not valid JSON"),
        ("[1, 2]", "invalid_json", "the message must be a JSON object"),
        ("{}", "bad_request", "the message has no 'type'"),
        ('{"type": 7}', "bad_request", "the message has no 'type'"),
        ('{"type": "dance"}', "unknown_message_type", "unknown message type 'dance'"),
        ('{"type": "join"}', "bad_request", "'token' must be a non-empty string"),
        ('{"type": "join", "token": ""}', "bad_request", "'token' must be a non-empty string"),
        (
            text({"type": "join", "token": "t", "name": "x" * 81}),
            "bad_request",
            "'name' is longer than 80 characters",
        ),
        (
            '{"type": "offer", "pc": "subscribe", "sdp": "v=0"}',
            "bad_request",
            '\'offer\' messages must have "pc": "publish"',
        ),
        (
            '{"type": "answer", "pc": "publish", "sdp": "v=0"}',
            "bad_request",
            '\'answer\' messages must have "pc": "subscribe"',
        ),
        (
            '{"type": "offer", "pc": "publish", "sdp": "m=video"}',
            "invalid_sdp",
            "the SDP must start with v=0",
        ),
        (
            text({"type": "offer", "pc": "publish", "sdp": "v=0", "sources": {"0": "tv"}}),
            "bad_request",
            "'sources' must map mids to camera, microphone or screen",
        ),
        (
            text({"type": "offer", "pc": "publish", "sdp": "v=0", "sources": ["camera"]}),
            "bad_request",
            "'sources' must map mids to camera, microphone or screen",
        ),
        (" " * (messages.MAX_MESSAGE_BYTES + 1), "bad_request", "message too large"),
    ],
)
def test_bad_input_gets_its_error_code(raw: str | bytes, code: str, message: str) -> None:
    with pytest.raises(SignalingError) as error:
        messages.parse(raw)
    assert (error.value.code, error.value.message) == (code, message)


def test_an_unknown_type_is_quoted_shortened() -> None:
    with pytest.raises(SignalingError) as error:
        messages.parse(text({"type": "x" * 500}))
    assert error.value.message == f"unknown message type {'x' * 40!r}"


def test_error_message_shape() -> None:
    assert messages.error_message("invalid_token", "no") == {
        "type": "error",
        "code": "invalid_token",
        "message": "no",
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["type", "token", "name", "pc", "sdp", "sources"]) | st.text(max_size=6),
        json_values | st.sampled_from(["join", "offer", "answer", "publish", "v=0"]),
        max_size=6,
    )
)
def test_any_json_object_parses_or_gets_a_signaling_error(data: dict[str, Any]) -> None:
    try:
        parsed = messages.parse(text(data))
    except SignalingError as exc:
        assert exc.code in ("bad_request", "invalid_json", "invalid_sdp", "unknown_message_type")
    else:
        assert isinstance(parsed, Join | Offer | Answer | Leave | End)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_get_a_signaling_error(raw: bytes) -> None:
    try:
        messages.parse(raw)
    except SignalingError:
        pass
