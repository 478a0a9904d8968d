"""The matchers of a batch's Alertmanager silence, from ``BMSREBOOT_SILENCE_MATCHERS``.

The template is written as Alertmanager and amtool write matchers (``worker.monitoring``'s
``parse_matchers``): ``instance=~"{names}"``, or several, comma separated
(``job="node",instance=~"({ips}):9100"``). In a regex matcher's value (``=~``, ``!~``) three
placeholders stand for the batch's servers, each as a regex alternation of its values, every
value escaped (``a\\.example|b\\.example``):

- ``{names}``: the servers' names (as the inventory has them);
- ``{ids}``: their ids;
- ``{ips}``: their first fixed IPv4 address.

The template is parsed first and the placeholders replaced in the parsed values, so an
escaped value never goes through the matcher syntax's own escaping. A placeholder outside a
regex matcher is refused: an alternation means nothing to ``=``. Alertmanager anchors each
regex (``^(?:...)$``), so ``{names}`` alone matches exactly the batch's names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from worker.monitoring import Matcher, parse_matchers

PLACEHOLDERS = ("{names}", "{ids}", "{ips}")
#: The placeholders whose values only the inventory has.
INVENTORY_PLACEHOLDERS = ("{names}", "{ips}")


@dataclass(frozen=True)
class Target:
    """One server a silence covers: its id, and its name and address when they were read."""

    id: str
    name: str | None = None
    ip: str | None = None


def check_template(template: str) -> list[Matcher]:
    """The template's matchers, placeholders unreplaced; ``ValueError`` says what is wrong."""
    matchers = parse_matchers(template)
    for matcher in matchers:
        if not matcher.is_regex and any(p in matcher.value for p in PLACEHOLDERS):
            raise ValueError(
                f"{matcher}: a placeholder stands for a regex alternation; use =~ "
                f'(e.g. {matcher.name}=~"{matcher.value}")'
            )
    if not any(p in m.value for m in matchers for p in PLACEHOLDERS):
        raise ValueError(
            f"{template!r} names none of {', '.join(PLACEHOLDERS)}: the silence would cover "
            "other servers than the batch's"
        )
    return matchers


#: What Go's ``regexp.QuoteMeta`` escapes (Alertmanager's regexes are Go's RE2). Not
#: Python's ``re.escape``: it escapes a space too, and ``\ `` is an error to RE2.
_META = re.compile(r"([\\.+*?()|\[\]{}^$])")


def quote_meta(text: str) -> str:
    """``text`` as a regex that matches it literally, as Go's ``regexp.QuoteMeta`` writes it."""
    return _META.sub(r"\\\1", text)


def needs_inventory(template: str) -> bool:
    """Whether the template needs the servers' names or addresses (not only their ids)."""
    return any(p in template for p in INVENTORY_PLACEHOLDERS)


def render(template: str, targets: Sequence[Target]) -> list[Matcher]:
    """The silence's matchers for ``targets``. ``ValueError`` when a placeholder has no value
    for some server (no name, no address read): a silence that left one out would let it page
    while another silence of the same batch would be a second one to track."""
    values: dict[str, list[str | None]] = {
        "{ids}": [t.id for t in targets],
        "{names}": [t.name for t in targets],
        "{ips}": [t.ip for t in targets],
    }
    out = []
    for matcher in check_template(template):
        value = matcher.value
        for placeholder, found in values.items():
            if placeholder not in value:
                continue
            missing = [t.id for t, v in zip(targets, found, strict=True) if not v]
            if missing or not found:
                raise ValueError(
                    f"{placeholder} has no value for server(s) {', '.join(missing[:5])}"
                    if missing
                    else f"{placeholder}: no servers"
                )
            alternation = "|".join(quote_meta(str(v)) for v in found)
            value = value.replace(placeholder, alternation)
        out.append(replace(matcher, value=value))
    return out
