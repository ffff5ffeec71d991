"""The dialect-independent parts of business tables and incremental sources (onestep.kit):
option checks, row dicts, stored cursor positions, and CursorProgress."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid

import pytest

from onestep.kit import (
    BusinessTableSpec,
    CursorProgress,
    IncrementalSpec,
    column_index,
    decode_position,
    encode_position,
    is_business_mode,
    row_dict,
)

GOOD = {"where": "status = 0", "claim": {"status": 9}, "ack": {"status": 1}, "nack": {"status": 2}}


def test_claim_without_nack_is_refused_naming_nack():
    with pytest.raises(ValueError, match=r"^nack is required with claim"):
        BusinessTableSpec.build(where="status = 0", claim={"status": 9}, ack={"status": 1})


def test_the_connector_refuses_claim_without_nack_at_construction():
    from onestep import MySQLConnector

    connector = MySQLConnector("mysql://root@127.0.0.1:1/none")  # never connects
    with pytest.raises(ValueError, match="nack"):
        connector.table_queue("orders", where="status = 0", claim={"status": 9}, ack={"status": 1})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"where": None}, "claim"),  # only where missing: still business mode via claim
        ({"where": "  "}, "where"),
        ({"claim": None, "nack": None}, "claim"),
        ({"ack": None}, "ack"),
        ({"ack": {}}, "ack"),
        ({"ack": {"status": [1]}}, "ack"),
        ({"ack": {"": 1}}, "ack column"),
        ({"key": "x" * 65}, "key"),
        ({"claim": {"id": 9}}, "claim must not write the key"),
        ({"lease_column": "status"}, "must not write the lease_column"),
        ({"lease_column": "id"}, "distinct"),
        ({"lease_s": 0}, "lease_s"),
    ],
)
def test_bad_options_name_the_parameter(change, named):
    options = {**GOOD, "key": "id", **change}
    if options["where"] is None:
        with pytest.raises(ValueError, match="where"):
            BusinessTableSpec.build(**options)
        return
    with pytest.raises(ValueError, match=named):
        BusinessTableSpec.build(**options)


def test_a_good_spec_keeps_the_values():
    spec = BusinessTableSpec.build(**GOOD, lease_column="claimed_at", attempts_column="tries")
    assert spec.claim == {"status": 9} and spec.nack == {"status": 2}
    assert spec.lease_column == "claimed_at" and spec.attempts_column == "tries"
    assert is_business_mode(where="x") and not is_business_mode(where=None, claim=None)


def test_incremental_order_breaks_ties_by_the_key():
    assert IncrementalSpec.build(cursor=("updated_at", "id")).order == ("updated_at", "id")
    assert IncrementalSpec.build(cursor="updated_at").order == ("updated_at", "id")
    assert IncrementalSpec.build(key="k", cursor=("ts",)).order == ("ts", "k")
    with pytest.raises(ValueError, match="cursor"):
        IncrementalSpec.build(cursor=("id", "updated_at"))
    with pytest.raises(ValueError, match="cursor"):
        IncrementalSpec.build(cursor=())


def test_a_row_is_json_able():
    row = row_dict(
        ["id", "amount", "at", "day", "blob", "text"],
        [
            7,
            decimal.Decimal("12.50"),
            datetime.datetime(2026, 1, 2, 3, 4, 5, 600),
            datetime.date(2026, 1, 2),
            b"\xff\x00",
            b"caf\xc3\xa9",
        ],
    )
    assert row == {
        "id": 7,
        "amount": "12.50",
        "at": "2026-01-02T03:04:05.000600",
        "day": "2026-01-02",
        "blob": "/wA=",
        "text": "café",
    }
    json.dumps(row)
    assert row_dict(["u", "j"], [uuid.UUID(int=1), {"a": [1]}]) == {
        "u": "00000000-0000-0000-0000-000000000001",
        "j": {"a": [1]},
    }


def test_positions_round_trip_through_json():
    position = (
        datetime.datetime(2026, 1, 2, 3, 4, 5, 600),
        decimal.Decimal("1.10"),
        datetime.date(2026, 1, 2),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "x",
        5,
    )
    assert decode_position(json.loads(json.dumps(encode_position(position)))) == position


def test_committed_waits_for_every_predecessor():
    progress = CursorProgress()
    for n in range(1, 6):
        assert progress.dispatch((n,))
    assert not progress.finish((3,))
    assert progress.committed is None
    assert progress.finish((1,)) and progress.committed == (1,)
    assert not progress.finish((5,))
    assert progress.committed == (1,)
    assert progress.finish((2,)) and progress.committed == (3,)
    assert progress.unfinished() == [(4,)]
    assert progress.finish((4,)) and progress.committed == (5,)
    assert len(progress) == 0 and progress.last == (5,)


def test_finishing_twice_or_a_stranger_changes_nothing():
    progress = CursorProgress((0,))
    progress.dispatch((1,))
    assert progress.finish((1,))
    assert not progress.finish((1,))
    assert not progress.finish((99,))
    assert progress.committed == (1,)
    progress.dispatch((2,))
    with pytest.raises(ValueError, match="twice"):
        progress.dispatch((2,))


def test_a_restart_repeats_only_what_had_not_finished():
    progress = CursorProgress()
    for n in range(1, 7):
        progress.dispatch((n,))
    for n in (1, 2, 4, 6):
        progress.finish((n,))
    stored = json.loads(json.dumps(progress.snapshot()))
    assert not progress.changed
    assert stored == {"position": [2], "finished": [[4], [6]]}

    again = CursorProgress.restore(stored)
    assert again.committed == (2,) and again.last == (2,)
    # reading resumes after (2,): 3, 4, 5, 6 come back; 4 and 6 are not handed out
    handed = [n for n in range(3, 8) if again.dispatch((n,))]
    assert handed == [3, 5, 7]
    assert again.committed == (2,)
    again.finish((3,))
    assert again.committed == (4,)
    again.finish((5,))
    assert again.committed == (6,)


def test_a_snapshot_remembers_a_bounded_number_of_finished_rows(monkeypatch):
    monkeypatch.setattr(CursorProgress, "MAX_REMEMBERED", 3)
    progress = CursorProgress()
    for n in range(10):
        progress.dispatch((n,))
    for n in range(1, 10):
        progress.finish((n,))
    snapshot = progress.snapshot()
    assert snapshot["position"] is None
    assert snapshot["finished"] == [[1], [2], [3]]
    assert CursorProgress.restore(None).committed is None


def test_column_index_matches_exactly_first_then_ignoring_case():
    columns = ["id", "Status", "status", "NOTE"]
    assert column_index(columns, "Status") == 1
    assert column_index(columns, "status") == 2
    assert column_index(columns, "note") == 3  # MySQL names are not case-sensitive


def test_the_incremental_statements_compare_row_values_after_the_position():
    from onestep.kit import IncrementalTableSource

    class Quoted(IncrementalTableSource):
        def quote(self, name: str, what: str) -> str:
            return '"' + name + '"'

    source = Quoted(None, "events", IncrementalSpec.build(cursor="updated_at", where="kind = '%'"))
    assert source._sql_after == (
        'SELECT * FROM "events" WHERE ("updated_at", "id") > (%s, %s) AND (kind = \'%%\') '
        'ORDER BY "updated_at", "id" LIMIT %s'
    )
