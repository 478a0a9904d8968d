"""Text made storable, in one place: what any audit database column or JSON value holds.

PostgreSQL's text and JSONB cannot hold NUL, and a value that does not fit its column must
never fail the write that records it (a state change, a dead letter, an event), or the work it
records would be stranded. Producers' words (a source, a key, a reason) also have their other
control characters written as escapes, so a log line or a table stays one line per row.
"""

from __future__ import annotations

from typing import Any, overload


def clean(value: object, limit: int | None = None, *, controls: bool = False) -> str:
    """``value`` as text: NUL (with ``controls``, every control character) written as an
    escape, cut to ``limit`` characters."""
    text = str(value)
    if controls and any(ch < " " or ch == "\x7f" for ch in text):
        text = "".join(
            ch if ch >= " " and ch != "\x7f" else ch.encode("unicode_escape").decode()
            for ch in text
        )
    elif "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text if limit is None else text[:limit]


@overload
def fit(value: None, limit: int) -> None: ...
@overload
def fit(value: object, limit: int) -> str: ...
def fit(value: object | None, limit: int) -> str | None:
    """:func:`clean` for a column that may be empty: None stays None."""
    return None if value is None else clean(value, limit)


def clean_json(value: Any) -> Any:
    """``value`` with NUL escaped in every string of it, keys included (JSONB refuses
    ``\\u0000``)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean_json(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value
