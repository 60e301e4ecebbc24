"""goose_proxy.translate.jsonbody: JSON out, valid UTF-8 whatever the text holds."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from goose_proxy.translate import jsonbody
from goose_proxy.translate.jsonbody import (
    _depth_exceeds,
    encode_json,
    encode_json_for_client,
    encode_json_in_pieces,
    encode_json_str,
    encode_str_for_client,
)

# every code point, lone surrogates (category Cs) included
_TEXT = st.text(st.characters(blacklist_categories=()), max_size=30)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(
    st.dictionaries(_TEXT, _VALUES | st.lists(_VALUES, max_size=9), max_size=5),
    st.integers(1, 4),
)
def test_a_body_encoded_in_pieces_is_the_same_bytes(body: dict[str, Any], per_call: int) -> None:
    # a large request body is encoded a value (or a slice of an array) at a time
    # in a worker thread, so that no one C call holds the event loop for all of it
    with mock.patch.object(jsonbody, "PIECE_ITEMS", per_call):
        assert encode_json_in_pieces(body) == encode_json(body)


@given(_VALUES)
def test_encoded_json_is_utf8_and_means_what_the_stdlib_says(value: Any) -> None:
    data = encode_json(value)
    data.decode("utf-8")  # never bad UTF-8
    assert json.loads(data) == json.loads(json.dumps(value))
    assert encode_json_str(value).encode("utf-8") == data


def test_only_the_surrogate_is_escaped() -> None:
    # the whole text as ASCII escapes made 20,000 CJK characters 120,000 bytes
    # on the wire instead of 60,000
    text = "中" * 20_000
    assert len(encode_json_str(text + "\ud800")) == len(encode_json_str(text)) + 6
    assert encode_json({"k\udc00": "é\ud800"}) == '{"k\\udc00":"é\\ud800"}'.encode()


@given(_VALUES)
def test_what_a_client_reads_has_no_lone_surrogate_escape(value: Any) -> None:
    # Goose's serde_json refuses "\ud800" alone: U+FFFD in its place
    data = encode_json_for_client(value)
    text = json.dumps(json.loads(data), ensure_ascii=False)  # every string, read back
    assert not any("\ud800" <= c <= "\udfff" for c in text)


def test_a_pair_written_as_halves_is_its_character_for_a_client() -> None:
    assert encode_json_for_client("a\ud83c\udf0db\ud800") == '"a🌍b\ufffd"'.encode()
    assert encode_json_for_client("plain") == encode_json("plain")


@given(_TEXT)
def test_the_text_delta_shortcut_encodes_a_string_as_the_encoder_does(text: str) -> None:
    # a stream's text deltas skip the encoder's Python layer; the bytes are the same
    assert encode_str_for_client(text) == encode_json_for_client(text)


def _depth(value: Any) -> int:
    """Containers nested in ``value`` (the plain recursive definition)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_NESTED = st.recursive(
    st.none() | st.integers(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=40,
)


@given(st.dictionaries(st.text(max_size=2), _NESTED, max_size=3), st.integers(1, 8))
def test_depth_check_agrees_with_the_plain_definition(value: Any, limit: int) -> None:
    # (a request body is an object: the check starts at one)
    assert _depth_exceeds(value, limit) == (_depth(value) > limit)
