"""``Records``: a read's messages by column, still a sequence of ``Record`` to its users."""

from __future__ import annotations

import pytest

from segment_mw.queue import Record, Records


def some(n: int, *, start: int = 0) -> list[Record]:
    return [
        Record(
            id=f"{i}-0",
            body=b'{"n":%d}' % i,
            integrations=b'{"All":false}' if i % 3 == 0 else None,
            only="A" if i % 4 == 0 else None,
            enqueued_at=float(i) if i % 2 else None,
            attempts=i % 5,
        )
        for i in range(start, start + n)
    ]


def test_records_hold_what_they_were_made_of_in_order() -> None:
    rows = some(7)
    records = Records.of(rows)
    assert len(records) == 7
    assert list(records) == rows
    assert [records[i] for i in range(7)] == rows
    assert records[-1] == rows[-1]
    assert records.ids == [r.id for r in rows]
    assert records.bodies == [r.body for r in rows]
    assert records.integrations == [r.integrations for r in rows]
    assert records.only == [r.only for r in rows]
    assert records.enqueued_at == [r.enqueued_at for r in rows]
    assert records.attempts == [r.attempts for r in rows]


def test_a_slice_is_records_with_every_column_cut_alike() -> None:
    rows = some(10)
    part = Records.of(rows)[2:7]
    assert isinstance(part, Records)
    assert list(part) == rows[2:7]
    assert part.attempts == [r.attempts for r in rows[2:7]]
    assert list(Records.of(rows)[::3]) == rows[::3]


def test_columns_left_out_hold_none_and_no_tries() -> None:
    records = Records(["1-0", "2-0"], [b"a", b"b"])
    assert list(records) == [
        Record("1-0", b"a", None, None, None, 0),
        Record("2-0", b"b", None, None, None, 0),
    ]


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        Records(["1-0", "2-0"], [b"a"])
    with pytest.raises(ValueError, match="differ in length"):
        Records(["1-0"], [b"a"], attempts=[0, 1])


def test_joined_records_keep_their_order_and_leave_the_parts_alone() -> None:
    first, second = Records.of(some(3)), Records.of(some(4, start=3))
    joined = Records.join([first, Records([], []), second])
    assert list(joined) == some(7)
    assert first + second == joined
    assert len(first) == 3
    assert len(second) == 4
    assert Records.join([]) == []
    assert Records.of([]) == []


def test_with_ids_and_with_bodies_change_that_column_alone() -> None:
    records = Records.of(some(3))
    tagged = records.with_ids([f"1/{rid}" for rid in records.ids])
    assert [r._replace(id=f"1/{r.id}") for r in records] == list(tagged)
    new = [b"x", b"y", b"z"]
    whole = records.with_bodies(new)
    assert [r._replace(body=b) for r, b in zip(records, new, strict=True)] == list(whole)
    assert records.bodies == [r.body for r in some(3)]


def test_records_compare_with_lists_and_are_not_hashable() -> None:
    rows = some(2)
    assert Records.of(rows) == rows
    assert Records.of(rows) == tuple(rows)
    assert Records.of(rows) != rows[:1]
    assert Records.of(rows) != "records"
    with pytest.raises(TypeError):
        hash(Records.of(rows))


def test_the_repr_names_ids_but_never_shows_a_body() -> None:
    records = Records(["1-0", "2-0", "3-0", "4-0"], [b'{"email":"a@example.com"}'] * 4)
    text = repr(records)
    assert "4 message(s)" in text
    assert "1-0" in text
    assert "example.com" not in text
