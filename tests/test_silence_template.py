"""The matchers of a batch's silence from BMSREBOOT_SILENCE_MATCHERS (tables, no services)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from worker.monitoring import Matcher
from worker.settings import Settings
from worker.silence_template import Target, check_template, needs_inventory, quote_meta, render

SERVERS = [
    Target("id-1", "web-1.example", "10.0.0.1"),
    Target("id-2", "web(2)", "10.0.0.2"),
]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            'instance=~"{names}"',
            [Matcher("instance", r"web-1\.example|web\(2\)", is_regex=True)],
        ),
        (
            'node=~"{names}"',
            [Matcher("node", r"web-1\.example|web\(2\)", is_regex=True)],
        ),
        (
            'instance=~"({ips}):9100"',
            [Matcher("instance", r"(10\.0\.0\.1|10\.0\.0\.2):9100", is_regex=True)],
        ),
        (
            '{job="node", server_id=~"{ids}"}',
            [Matcher("job", "node"), Matcher("server_id", "id-1|id-2", is_regex=True)],
        ),
        (
            'host!~"{names}",env="prod"',
            [
                Matcher("host", r"web-1\.example|web\(2\)", is_regex=True, is_equal=False),
                Matcher("env", "prod"),
            ],
        ),
    ],
)
def test_a_template_becomes_matchers_of_the_batch_s_servers(
    template: str, expected: list[Matcher]
) -> None:
    assert render(template, SERVERS) == expected


@pytest.mark.parametrize(
    "text",
    ["web-1.example", "a b", "x+y*z?", "(a|b)", "[0-9]{2}", "^$", "back\\slash", "名前"],
)
def test_an_escaped_value_matches_itself_only(text: str) -> None:
    # Go's RE2 and Python's re agree on these escapes: the value matches itself, anchored
    pattern = re.compile(f"^(?:{quote_meta(text)})$")
    assert pattern.match(text)
    assert not pattern.match(text + "x")
    assert "\\ " not in quote_meta(text)  # RE2 refuses an escaped space


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ('instance="{names}"', "use =~"),
        ('job="node"', "names none of"),
        ('instance=~"{names}', "cannot read matchers"),
        ("", "no matchers"),
    ],
)
def test_a_template_that_cannot_silence_the_batch_is_refused(template: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_template(template)
    # and a deployment with it does not start
    with pytest.raises(ValidationError, match="silence_matchers"):
        Settings(silence_matchers=template)


def test_a_server_without_the_value_a_placeholder_needs_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\{ips\} has no value for server\(s\) id-3"):
        render('instance=~"{ips}"', [*SERVERS, Target("id-3", "web-3", None)])


@pytest.mark.parametrize(
    ("template", "needs"),
    [('instance=~"{names}"', True), ('i=~"({ips}):9100"', True), ('id=~"{ids}"', False)],
)
def test_only_names_and_addresses_need_the_inventory(template: str, needs: bool) -> None:
    assert needs_inventory(template) is needs


def test_the_default_template_is_instance_by_name() -> None:
    assert Settings().silence_matchers == 'instance=~"{names}"'
    assert Settings().alertmanager_url is None
    assert Settings().silence_margin == 900.0
    assert Settings().silence_required is False
