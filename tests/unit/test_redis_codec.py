"""How messages map onto Redis stream entries (adapters/redis/_codec.py), without a
server: JSON and bytes bodies, meta, attempts, what cannot be encoded or decoded, and
the delay-set member format the mover script unpacks."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.redis._codec import (
    ATTEMPTS,
    BODY,
    META,
    NONCE_LENGTH,
    TYPE,
    decode_entry,
    encode_fields,
    encode_meta,
    pack_delayed,
    unpack_delayed,
    with_attempts,
)
from onestep import EncodeError
from onestep.kit import MessageTooLarge

#: A limit no message here comes near (the connector reads the server's).
BIG = 1 << 30


def round_trip(body: Any, meta: Any = None, attempts: int = 0) -> Any:
    fields = encode_fields("s", body, encode_meta("s", meta, BIG), BIG, attempts)
    return decode_entry(b"1-0", fields)


@pytest.mark.parametrize("body", [{"a": [1, 2.5, None]}, "text", 7, None, b"\x00\xff"])
def test_bodies_and_meta_round_trip(body: Any) -> None:
    delivery = round_trip(body, {"trace": "t", "n": [1]}, attempts=2)
    assert delivery.payload == body
    assert delivery.meta == {"trace": "t", "n": [1]}
    assert delivery.attempts == 2
    assert delivery.error is None
    assert delivery.handle[0] == b"1-0"


def test_the_fields_are_small_and_readable_by_other_consumers() -> None:
    assert encode_fields("s", {"n": 1}, None, BIG) == {BODY: b'{"n":1}'}
    assert encode_fields("s", b"raw", b'{"k":1}', BIG, 3) == {
        BODY: b"raw",
        TYPE: b"bytes",
        META: b'{"k":1}',
        ATTEMPTS: b"3",
    }
    assert encode_meta("s", {}, BIG) is None
    assert with_attempts({BODY: b"1", ATTEMPTS: b"2"}, 0) == {BODY: b"1"}
    assert with_attempts({BODY: b"1"}, 4) == {BODY: b"1", ATTEMPTS: b"4"}


@pytest.mark.parametrize(
    ("body", "meta", "error", "text"),
    [
        (object(), None, EncodeError, "body is not valid JSON"),
        (float("inf"), None, EncodeError, "NaN and Infinity are not JSON"),
        ("a\udc80", None, EncodeError, "lone surrogate"),
        (1, {"x": object()}, EncodeError, "meta is not valid JSON"),
        (1, {2: "two"}, EncodeError, "meta keys must be strings"),
        (1, [("k", "v")], TypeError, "meta must be a dict or None, got list"),
    ],
)
def test_what_cannot_be_encoded_is_named(body: Any, meta: Any, error: Any, text: str) -> None:
    with pytest.raises(error, match=text) as caught:
        encode_fields("jobs", body, encode_meta("jobs", meta, BIG), BIG)
    if error is EncodeError and "keys" not in text:
        assert "Redis stream 'jobs'" in str(caught.value)


def test_a_body_or_meta_over_the_limit_is_refused_naming_sizes_and_setting() -> None:
    assert encode_fields("jobs", "x" * 8, None, 10) == {BODY: b'"xxxxxxxx"'}  # 10 bytes
    with pytest.raises(MessageTooLarge) as caught:
        encode_fields("jobs", "x" * 9, None, 10)
    assert str(caught.value) == (
        "Redis stream 'jobs': body is 11 bytes, over the limit of 10 bytes "
        "(max_message_bytes, Redis's proto-max-bulk-len)"
    )
    assert (caught.value.size, caught.value.limit) == (11, 10)
    with pytest.raises(MessageTooLarge, match="bodies\\[3\\] is 11 bytes"):
        encode_fields("jobs", b"y" * 11, None, 10, what="bodies[3]")
    with pytest.raises(MessageTooLarge, match="meta is 12 bytes"):
        encode_meta("jobs", {"k": "1234"}, 11)


@pytest.mark.parametrize(
    ("fields", "problem", "payload"),
    [
        ({BODY: b"{nope"}, "its body is not JSON", "{nope"),
        ({b"other": b"x"}, "has no 'body' field", {"other": "x"}),
        ({BODY: b"1", META: b"{bad"}, "its meta is not JSON", 1),
    ],
)
def test_what_cannot_be_decoded_carries_an_error(
    fields: dict[bytes, bytes], problem: str, payload: Any
) -> None:
    delivery = decode_entry(b"5-1", fields)
    assert delivery.error is not None and problem in str(delivery.error)
    assert "5-1" in str(delivery.error)
    assert delivery.payload == payload


def test_attempts_add_the_redeliveries_and_ignore_garbage() -> None:
    assert decode_entry(b"1-0", {BODY: b"1", ATTEMPTS: b"2"}, redelivered=1).attempts == 3
    assert decode_entry(b"1-0", {BODY: b"1", ATTEMPTS: b"x"}).attempts == 0
    assert decode_entry(b"1-0", {BODY: b"1", ATTEMPTS: b"-4"}).attempts == 0
    assert decode_entry(b"1-0", {BODY: b"[1]", META: b"[1]"}).meta == {"meta": [1]}


def test_delay_set_members_unpack_to_their_fields_and_sort_in_put_order() -> None:
    fields = {BODY: b"a:b:\x00", META: b"{}", ATTEMPTS: b"12"}
    members = [pack_delayed(fields) for _ in range(50)]
    assert len(set(members)) == 50  # equal messages are distinct members
    assert members == sorted(members)  # due at once, they are moved in put order
    assert all(len(m.split(b"2:")[0]) >= NONCE_LENGTH for m in members)
    assert unpack_delayed(members[0]) == fields
