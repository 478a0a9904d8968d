"""Credential sources built from a small dict: what an account of the fleet file names.

    credentials_from_config({"source": "env", "ak_env": "PROD_AK", "sk_env": "PROD_SK"})
    credentials_from_config({"source": "metadata"})
    credentials_from_config({"source": "file", "profile": "prod"})
    credentials_from_config({"source": "agency", "agency_urn": "iam::…:agency:ops",
                             "from": prod_credentials})
    credentials_from_config({"source": "password", "user": "ops", "domain": "acme"})

Each returns a :class:`~worker.bms.credentials.CredentialProvider` (AK/SK signing) or, for
``password``, a :class:`PasswordLogin` (IAM tokens, which need a region's IAM endpoint: see
:meth:`PasswordLogin.token_auth`). Both have ``describe()``: where the credential comes from,
never the secret. A dict that cannot work raises :class:`~worker.bms.errors.CredentialError`
naming what is wrong (unknown source or key, a missing variable or file, a bad value).

The keys of each source (all optional unless said):

``env``       ``ak_env``, ``sk_env`` (both or neither; default the SDK's
              ``HUAWEICLOUD_SDK_AK``/``_SK`` with ``HUAWEICLOUD_SDK_SECURITY_TOKEN`` if set),
              ``token_env`` (a temporary credential's security token; must be set if named)
``file``      ``path`` (default ``$HUAWEICLOUD_SDK_CREDENTIALS_FILE`` or
              ``~/.huaweicloud/credentials``), ``profile`` (the INI section, default ``basic``)
``metadata``  none: ``BMSREBOOT_METADATA_URL`` and ``BMSREBOOT_CREDENTIALS_REFRESH_MARGIN``
``agency``    ``agency_urn`` (required), ``from`` (required: the credentials that sign the
              STS call: a provider, a dict like this one, or a name given to ``resolve``),
              ``session_name`` (default ``bmsreboot``), ``duration_seconds`` (default 3600),
              ``sts_endpoint`` (default ``BMSREBOOT_STS_ENDPOINT`` or the region's)
``password``  ``user`` and ``domain`` (required), ``password_env`` (the variable holding the
              password, default ``BMSREBOOT_IAM_PASSWORD``; never the password itself)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.bms.agency import DEFAULT_DURATION, DEFAULT_SESSION_NAME, AgencyCredentials
from worker.bms.auth import TokenAuth
from worker.bms.credentials import (
    SDK_AK_ENV,
    SDK_SECURITY_TOKEN_ENV,
    SDK_SK_ENV,
    CredentialProvider,
    EnvCredentials,
    FileCredentials,
    StaticCredentials,
)
from worker.bms.errors import ConfigurationError, CredentialError
from worker.bms.metadata import MetadataCredentials

if TYPE_CHECKING:
    from worker.settings import Settings

SOURCES = ("env", "file", "metadata", "agency", "password")
DEFAULT_PASSWORD_ENV = "BMSREBOOT_IAM_PASSWORD"  # noqa: S105 - a variable name
_KEYS: dict[str, frozenset[str]] = {
    "env": frozenset({"ak_env", "sk_env", "token_env"}),
    "file": frozenset({"path", "profile"}),
    "metadata": frozenset(),
    "agency": frozenset({"agency_urn", "from", "session_name", "duration_seconds", "sts_endpoint"}),
    "password": frozenset({"user", "domain", "password_env"}),
}


@dataclass(frozen=True)
class PasswordLogin:
    """An IAM user's password login: tokens per project from the region's IAM endpoint."""

    user: str
    domain: str
    password: str = field(repr=False)
    #: Where the password came from, for :meth:`describe`.
    origin: str = "settings"

    def describe(self) -> str:
        return f"IAM password login of user {self.user} in domain {self.domain} ({self.origin})"

    def __repr__(self) -> str:
        return f"PasswordLogin({self.describe()})"

    def token_auth(
        self,
        iam_endpoint: str,
        *,
        timeout: tuple[float, float] = (5.0, 30.0),
        verify: bool | str = True,
        user_agent: str | None = None,
    ) -> TokenAuth:
        """A token auth for one region's IAM endpoint (a project id belongs to one region)."""
        return TokenAuth(
            iam_endpoint,
            self.user,
            self.password,
            self.domain,
            timeout=timeout,
            verify=verify,
            user_agent=user_agent,
        )


#: What a credentials dict becomes.
CredentialSource = CredentialProvider | PasswordLogin


def credentials_from_config(
    spec: Mapping[str, Any],
    *,
    settings: Settings | None = None,
    environ: Mapping[str, str] | None = None,
    resolve: Callable[[str], CredentialSource] | None = None,
) -> CredentialSource:
    """The credential source ``spec`` describes; raises CredentialError naming the problem.

    ``settings`` gives the defaults (metadata URL, refresh margin, STS endpoint, timeouts, TLS);
    ``environ`` is where variables are read (default ``os.environ``); ``resolve`` turns the name
    in an agency's ``from`` into a source (the fleet file's account names)."""
    if settings is None:
        from worker.settings import Settings

        settings = Settings()
    env = os.environ if environ is None else environ
    if not isinstance(spec, Mapping):
        raise CredentialError('credentials must be a table such as { source = "env", ... }')
    source = spec.get("source")
    if source is None:
        raise CredentialError(f"credentials need a source (one of {', '.join(SOURCES)})")
    if source not in _KEYS:
        raise CredentialError(
            f"unknown credentials source {source!r} (one of {', '.join(SOURCES)})"
        )
    unknown = sorted(set(spec) - {"source"} - _KEYS[source])
    if unknown:
        allowed = ", ".join(sorted(_KEYS[source])) or "none"
        raise CredentialError(
            f"unknown key {', '.join(map(repr, unknown))} for credentials source {source!r} "
            f"(its keys: {allowed})"
        )
    timeout = (settings.connect_timeout, settings.read_timeout)
    margin = settings.credentials_refresh_margin
    if source == "env":
        ak_env, sk_env = _text(spec, "ak_env"), _text(spec, "sk_env")
        if (ak_env is None) != (sk_env is None):
            raise CredentialError(
                "credentials source 'env' needs both ak_env and sk_env, or neither"
            )
        return EnvCredentials(
            ak_env or SDK_AK_ENV, sk_env or SDK_SK_ENV, _text(spec, "token_env"), environ=env
        )
    if source == "file":
        return FileCredentials(_text(spec, "path"), _text(spec, "profile") or "basic", environ=env)
    if source == "metadata":
        return MetadataCredentials(settings.metadata_url, timeout=timeout, refresh_margin=margin)
    if source == "agency":
        urn = _text(spec, "agency_urn")
        if urn is None:
            raise CredentialError("credentials source 'agency' needs agency_urn")
        via = _caller(spec.get("from"), settings=settings, environ=env, resolve=resolve)
        duration = spec.get("duration_seconds", DEFAULT_DURATION)
        return AgencyCredentials(
            urn,
            via=via,
            sts_endpoint=_text(spec, "sts_endpoint") or settings.effective_sts_endpoint,
            session_name=_text(spec, "session_name") or DEFAULT_SESSION_NAME,
            duration_seconds=duration,
            timeout=timeout,
            verify=settings.ca_bundle or settings.verify_tls,
            refresh_margin=margin,
        )
    user, domain = _text(spec, "user"), _text(spec, "domain")
    if user is None or domain is None:
        raise CredentialError("credentials source 'password' needs user and domain")
    password_env = _text(spec, "password_env") or DEFAULT_PASSWORD_ENV
    password = env.get(password_env)
    if not password:
        raise CredentialError(f"environment variable {password_env} is not set")
    return PasswordLogin(user, domain, password, origin=f"password from {password_env}")


def _text(spec: Mapping[str, Any], key: str) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CredentialError(f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _caller(
    value: Any,
    *,
    settings: Settings,
    environ: Mapping[str, str],
    resolve: Callable[[str], CredentialSource] | None,
) -> CredentialProvider:
    """The AK/SK credentials an agency is assumed with (its ``from``)."""
    if value is None:
        raise CredentialError(
            "credentials source 'agency' needs from: the credentials that assume the agency"
        )
    if isinstance(value, str) and resolve is not None:
        try:
            caller: Any = resolve(value)
        except (KeyError, LookupError):
            raise CredentialError(f"agency from {value!r} names no credentials") from None
    elif isinstance(value, Mapping):
        caller = credentials_from_config(value, settings=settings, environ=environ, resolve=resolve)
    else:
        caller = value
    if isinstance(caller, PasswordLogin):
        raise CredentialError(
            "an agency is assumed with AK/SK credentials (env, file, metadata or agency), "
            "not a password login"
        )
    if not isinstance(caller, CredentialProvider):
        raise CredentialError(
            f"agency from must be credentials (a provider, a table or a name), got {value!r}"
        )
    return caller


def source_from_settings(settings: Settings) -> CredentialSource:
    """Today's single-account settings as a source: a static AK/SK (with the optional security
    token) when ``HUAWEICLOUD_SDK_AK``/``_SK`` are set, else the IAM password login when the
    IAM user, password and domain are set, else :class:`ConfigurationError`."""
    if settings.ak or settings.sk:
        if not (settings.ak and settings.sk):
            raise ConfigurationError(f"set both {SDK_AK_ENV} and {SDK_SK_ENV}, or neither")
        token = settings.security_token.get_secret_value() if settings.security_token else None
        return StaticCredentials(
            settings.ak.get_secret_value(),
            settings.sk.get_secret_value(),
            token,
            origin=f"{SDK_AK_ENV}/{SDK_SK_ENV}"
            + (f" and {SDK_SECURITY_TOKEN_ENV}" if token else ""),
        )
    if settings.security_token:
        raise ConfigurationError(
            f"{SDK_SECURITY_TOKEN_ENV} is set without {SDK_AK_ENV} and {SDK_SK_ENV}: a security "
            "token belongs to a temporary AK/SK"
        )
    if settings.iam_user and settings.iam_password and settings.iam_domain:
        return PasswordLogin(
            settings.iam_user,
            settings.iam_domain,
            settings.iam_password.get_secret_value(),
            origin="password from BMSREBOOT_IAM_PASSWORD",
        )
    raise ConfigurationError(
        "no BMS credentials: set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK (AK/SK signing), "
        "or BMSREBOOT_IAM_USER, BMSREBOOT_IAM_PASSWORD and BMSREBOOT_IAM_DOMAIN (IAM token)"
    )
