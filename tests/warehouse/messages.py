"""Messages for the warehouse tests, serialised by the library's own event builder."""

from __future__ import annotations

from typing import Any

from segment_mw import events


def message(
    call: str,
    fields: dict[str, Any] | None = None,
    *,
    user_id: str | None = "u-1",
    anonymous_id: str | None = "anon-1",
    **options: Any,
) -> bytes:
    """One serialised message of type ``call`` (fields as in segment_docs.Case)."""
    f = dict(fields or {})
    if call == "track":
        built = events.track_fields(f["event"], f.get("properties"))
    elif call in ("page", "screen"):
        built = events.page_fields(f.get("name"), f.get("properties"), f.get("category"), call)
    elif call == "identify":
        built = events.identify_fields(f.get("traits"))
    elif call == "group":
        built = events.group_fields(f["groupId"], f.get("traits"))
    elif call == "alias":
        built = events.alias_fields(f["previousId"], user_id)
    else:
        raise ValueError(call)
    entry = events.build(call, built, user_id=user_id, anonymous_id=anonymous_id, **options)
    return entry.body
