"""No password shows where Celery shows its configuration.

Celery censors the table of settings it shows (``app.conf.table()``: the ``conf`` and
``report`` remote-control commands behind ``celery inspect conf`` and Flower's worker page,
``celery report``) by key only: a key matching ``API|TOKEN|KEY|SECRET|PASS|...`` is masked,
``broker_url`` and keys containing ``backend`` have their URL's password masked, and every
other value is shown as it is, so ``redbeat_redis_url = redis://:PASSWORD@host`` appeared in
clear. :func:`install` wraps Celery's censoring (``celery.app.utils.filter_hidden_settings``,
which ``Settings.table`` looks up at each call; Celery offers no hook of its own there) so that
after Celery's masking, **any** value holding a URL with a password is masked too, whatever its
key, also inside dicts (``broker_transport_options``, ``redbeat_redis_options``), lists and the
text of other objects. A value is censored by what it holds, not by its name: a setting added
later (a ``redis-sentinel://`` URL for redbeat, a second broker) is covered without a change here.

We keep ``redbeat_redis_url`` in the configuration rather than let celery-redbeat fall back to
``broker_url``: redbeat warns that the fallback goes away in 2.5.0.

A regular expression rather than kombu's ``sanitize_url``: that parses one URL only (a
``;``-separated failover list such as ``sentinel://:pw@a;sentinel://:pw@b`` comes out mangled)
and drops the query, and it needs the value to be nothing but the URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

MASK = "********"

#: ``scheme://user:PASSWORD@`` (the user may be empty: ``redis://:PASSWORD@host``). The
#: password runs to the last ``@`` before whitespace or the next ``scheme://``, so that one with
#: an ``@``, ``/`` or ``;`` of its own is masked whole (too much rather than too little).
_USERINFO_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)"
    r"(?:(?![A-Za-z][A-Za-z0-9+.\-]*://)\S)+(?=@)"
)
#: ``?password=...`` or ``&password=...`` in a URL's query.
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&;](?:password|passwd|pass|pwd)=)[^&;\s]*", re.I)


def mask_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by :data:`MASK`."""
    text = _USERINFO_PASSWORD.sub(rf"\g<head>{MASK}", text)
    return _QUERY_PASSWORD.sub(rf"\g<head>{MASK}", text)


#: ``scheme://USERINFO@``: the whole of a URL's user info (a user alone may be the token, as in
#: ``https://TOKEN@host/hook``).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]+(?=@)")
#: A query parameter whose name says it is a credential: ``?token=``, ``&api_key=``,
#: ``&X-Amz-Signature=``, ``?sig=``, ``?password=``, ``&client_secret=`` ...
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;][^=&;#\s]*(?:token|secret|key|pass|pwd|sig|auth|credential)[^=&;#\s]*=)"
    r"[^&;#\s]*",
    re.I,
)


def mask_url_credentials(text: str) -> str:
    """``text`` with every URL's credentials masked: its whole user info (``user:password@``,
    or a token given as the user) and the values of query parameters named like a credential
    (token, secret, key, password, sig, auth). For webhook and chat URLs in logs and in
    ``bmsreboot webhooks``: where a URL an operator or a producer configured is shown."""
    text = mask_passwords(text)
    text = _USERINFO.sub(rf"\g<head>{MASK}", text)
    return _QUERY_SECRET.sub(rf"\g<head>{MASK}", text)


def censor(value: Any) -> Any:
    """``value`` with every password of a URL in it masked: strings, and the values of
    mappings, lists, tuples and sets, at any depth. Another object is kept as it is unless
    its text holds one; then it becomes its masked text."""
    if isinstance(value, str):
        return mask_passwords(value)
    if isinstance(value, Mapping):
        return {key: censor(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(censor(item) for item in value)
    if isinstance(value, list | set | frozenset):
        return [censor(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    text = repr(value)
    masked = mask_passwords(text)
    return value if masked == text else masked


def install() -> None:
    """Make Celery's censored configuration table mask every URL's password (idempotent)."""
    from celery.app import utils

    original: Callable[[dict[str, Any]], dict[str, Any]] = utils.filter_hidden_settings
    if getattr(original, "bmsreboot_censor", False):
        return

    def filter_hidden_settings(conf: dict[str, Any]) -> dict[str, Any]:
        return dict(censor(original(conf)))

    filter_hidden_settings.bmsreboot_censor = True  # type: ignore[attr-defined]
    utils.filter_hidden_settings = filter_hidden_settings
