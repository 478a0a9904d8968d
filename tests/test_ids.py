"""Packed server ids: how large requests travel and wait in the audit database."""

from __future__ import annotations

import base64
import io
import uuid

import pytest

from worker import ids
from worker.cli.reboots import read_ids
from worker.pipeline.producer import PACK_ABOVE, build_payload, id_count
from worker.pipeline.validation import validate_request

PROJECT = "0123456789abcdef0123456789abcdef"


def new(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def test_pack_and_unpack_round_trip_in_order_and_in_lower_case() -> None:
    servers = new(5)
    packed = ids.pack([servers[0].upper(), f"  {servers[1]} ", *servers[2:]])
    assert len(packed) == 5 * ids.SIZE
    assert ids.unpack(packed) == servers
    assert list(ids.chunks(packed, [2, 3])) == [packed[:32], packed[32:]]


def test_pack_names_the_ids_that_are_not_uuids_with_their_count() -> None:
    with pytest.raises(ids.BadIds) as caught:
        ids.pack([str(uuid.uuid4()), "x", 3, *(f"bad{i}" for i in range(7))], examples=2)
    assert caught.value.count == 9
    assert caught.value.bad == [(1, "'x'"), (2, "3")]


def test_dedupe_keeps_the_first_of_each_id_in_order() -> None:
    a, b, c = new(3)
    packed = ids.pack([a, b, a, c, b, a])
    assert ids.unpack(ids.dedupe(packed)) == [a, b, c]
    unique = ids.pack([a, b, c])
    assert ids.dedupe(unique) is unique  # nothing repeated: no copy


def test_dedupe_compares_whole_ids_whose_bits_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bitmap of 16 bits: most of 50 different ids share a bit with another
    monkeypatch.setattr(ids, "_BITS", 16)
    servers = new(50)
    packed = ids.pack([*servers, servers[7], servers[0]])
    assert ids.unpack(ids.dedupe(packed)) == servers
    unique = ids.pack(servers)
    assert ids.dedupe(unique) is unique
    with pytest.raises(ValueError, match="multiple of 16"):
        ids.dedupe(b"123")


def test_a_large_request_travels_packed_and_validates_like_a_list() -> None:
    servers = new(PACK_ABOVE + 1)
    payload = build_payload(PROJECT, [*servers, servers[0]])
    assert "server_ids" not in payload
    assert id_count(payload) == PACK_ABOVE + 2
    result = validate_request(payload, max_servers=10_000)
    assert result.valid, result.reasons
    assert result.server_ids == servers
    assert (result.servers, result.duplicates_removed) == (PACK_ABOVE + 1, 1)
    # A producer writing JSON sends the same bytes in base64
    as_json = {**payload, "server_ids_packed": base64.b64encode(payload["server_ids_packed"])}
    as_json["server_ids_packed"] = as_json["server_ids_packed"].decode("ascii")
    assert validate_request(as_json, max_servers=10_000).server_ids == servers
    # A small request, or one with ids that are not UUIDs, stays a list
    assert build_payload(PROJECT, servers[:3])["server_ids"] == servers[:3]
    assert build_payload(PROJECT, ids.pack(servers[:3]))["server_ids"] == servers[:3]
    mixed = build_payload(PROJECT, [*servers, "not-an-id"])
    assert mixed["server_ids"][-1] == "not-an-id"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"server_ids_packed": "***"}, "server_ids_packed is not valid base64"),
        ({"server_ids_packed": 12}, "server_ids_packed must be a base64 string, got int"),
        (
            {"server_ids_packed": base64.b64encode(b"x" * 20).decode()},
            "server_ids_packed must hold 16 bytes per server id, got 20",
        ),
        ({"server_ids_packed": ""}, "server_ids is empty: give at least one server id"),
        (
            {"server_ids_packed": base64.b64encode(b"x" * 16 * 11).decode()},
            "too many servers: 11 given, at most 10 per request",
        ),
        (
            {"server_ids_packed": base64.b64encode(b"x" * 16).decode(), "server_ids": new(1)},
            "give server_ids or server_ids_packed, not both",
        ),
    ],
)
def test_bad_packed_ids_are_rejected_with_a_reason(fields: dict[str, object], reason: str) -> None:
    payload = {"request_id": str(uuid.uuid4()), "project_id": PROJECT, **fields}
    result = validate_request(payload, max_servers=10)
    assert not result.valid
    assert any(r.startswith(reason) for r in result.reasons), result.reasons


def test_an_ids_file_is_read_packed_unless_some_line_is_not_a_uuid() -> None:
    servers = new(3)
    text = f"# nightly\n{servers[0]}\n\n{servers[1].upper()}  # rack 7\n{servers[2]}\n"
    assert read_ids(io.StringIO(text)) == ids.pack(servers)
    assert read_ids(io.StringIO(text + "web-01\n")) == [*servers, "web-01"]
