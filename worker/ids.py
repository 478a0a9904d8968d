"""Server ids packed as their 16-byte UUID values: how a large request travels and is stored.

A BMS server id is a UUID. A million of them are 37 MB as JSON text and about 90 MB as Python
strings, but 16 MB packed (``uuid.UUID(id).bytes`` one after the other, in order). Producers
send large requests packed (the intake field ``server_ids_packed``, base64 of these bytes), and
a batch keeps its not-yet-submitted servers packed in one column until it is released
(``docs/audit-db.md``). Packing normalises case: ids come back as lower-case text, the form the
API itself returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

SIZE = 16
UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


class BadIds(ValueError):
    """Some ids are not UUIDs: ``bad`` holds (position, the value shown short) examples."""

    def __init__(self, bad: list[tuple[int, str]], count: int) -> None:
        self.bad = bad
        self.count = count
        super().__init__(f"{count} server id(s) are not UUIDs")


def parse(item: object) -> bytes | None:
    """One id's 16 bytes (surrounding blanks ignored), or None if it is not a UUID."""
    text = item.strip() if isinstance(item, str) else None
    if text is None or not UUID_RE.match(text):
        return None
    return bytes.fromhex(text.replace("-", ""))


def pack(ids: Iterable[object], *, examples: int = 5) -> bytes:
    """Pack text ids (surrounding blanks ignored); raise :class:`BadIds` naming the first
    ``examples`` ids that are not UUIDs (with their positions) and counting all of them."""
    out = bytearray()
    bad: list[tuple[int, str]] = []
    count = 0
    for position, item in enumerate(ids):
        value = parse(item)
        if value is None:
            count += 1
            if len(bad) < examples:
                shown = repr(item)
                bad.append((position, shown if len(shown) <= 60 else shown[:57] + "..."))
            continue
        out += value
    if count:
        raise BadIds(bad, count)
    return bytes(out)


def count(packed: bytes) -> int:
    return len(packed) // SIZE


def unpack(packed: bytes) -> list[str]:
    """The ids as lower-case text, in order."""
    return list(iter_unpack(packed))


def iter_unpack(packed: bytes) -> Iterator[str]:
    text = packed.hex()
    for i in range(0, len(text), 2 * SIZE):
        yield (
            f"{text[i : i + 8]}-{text[i + 8 : i + 12]}-{text[i + 12 : i + 16]}-"
            f"{text[i + 16 : i + 20]}-{text[i + 20 : i + 32]}"
        )


#: The bitmap :func:`dedupe` marks ids in: 2**26 bits (8 MiB). A million ids set under 2% of it,
#: so few ids share a bit with another and need comparing in full.
_BITS = 1 << 26


def dedupe(packed: bytes) -> bytes:
    """``packed`` without repeated ids (the first of each kept, order kept).

    Memory matters at a million ids: a set of a million 16-byte objects costs over 100 MB.
    So each id's hash marks one bit of an 8 MiB bitmap; only ids whose bit was already
    marked (a repeat, or one of a few thousand chance collisions) are then compared in full,
    in a second pass. With no repeated id ``packed`` is returned as is.
    """
    if len(packed) % SIZE:
        raise ValueError(f"packed ids must be a multiple of {SIZE} bytes, got {len(packed)}")
    bitmap = bytearray(_BITS // 8)
    shared: set[int] = set()
    mask = _BITS - 1
    for i in range(0, len(packed), SIZE):
        bit = hash(packed[i : i + SIZE]) & mask
        byte, flag = bit >> 3, 1 << (bit & 7)
        if bitmap[byte] & flag:
            shared.add(bit)
        else:
            bitmap[byte] |= flag
    del bitmap
    if not shared:
        return packed
    repeats: list[int] = []  # offsets of the repeated ids, to drop
    seen: set[bytes] = set()
    for i in range(0, len(packed), SIZE):
        chunk = packed[i : i + SIZE]
        if hash(chunk) & mask in shared:
            if chunk in seen:
                repeats.append(i)
            else:
                seen.add(chunk)
    if not repeats:
        return packed
    view = memoryview(packed)
    out = bytearray()
    start = 0
    for i in repeats:
        out += view[start:i]
        start = i + SIZE
    out += view[start:]
    return bytes(out)


def chunks(packed: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    """``packed`` cut into consecutive runs of ``sizes`` ids."""
    start = 0
    for size in sizes:
        yield packed[start : start + size * SIZE]
        start += size * SIZE
