"""Where an AK/SK comes from: the credential provider seam of :class:`~worker.bms.signing.AkSkAuth`.

A :class:`CredentialProvider` gives the current :class:`Credential` (AK, SK and, for temporary
credentials, a security token) and can be asked for a new one after the API refused the old one
(:meth:`CredentialProvider.refresh`). ``AkSkAuth`` asks its provider on every request, so
temporary credentials are replaced without rebuilding the client. Providers here:

- :class:`StaticCredentials`: an AK/SK (and optional token) given in code or settings.
- :class:`EnvCredentials`: from named environment variables.
- :class:`FileCredentials`: the official SDK's credentials file (INI).
- :class:`RefreshingCredentials`: the base of temporary credentials that expire
  (:mod:`worker.bms.metadata`, :mod:`worker.bms.agency`): refreshed before expiry, one refresh
  at a time per process, a failed refresh retried with backoff.

:mod:`worker.bms.sources` builds any of them (and the IAM password login) from a small dict.
No SK, security token or password ever appears in a repr, a ``describe()``, a log line or an
error message; an AK is shown by its first four characters only.
"""

from __future__ import annotations

import configparser
import copy
import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from worker.bms.errors import BmsError, CredentialError, ProtocolError

log = logging.getLogger(__name__)

#: The official SDK's environment variables (``EnvCredentialProvider``).
SDK_AK_ENV = "HUAWEICLOUD_SDK_AK"
SDK_SK_ENV = "HUAWEICLOUD_SDK_SK"
SDK_SECURITY_TOKEN_ENV = "HUAWEICLOUD_SDK_SECURITY_TOKEN"  # noqa: S105 - a variable name
#: The official SDK's credentials file (``ProfileCredentialProvider``): this variable, else
#: ``~/.huaweicloud/credentials``; the section of its ``BasicCredentials`` is ``[basic]``.
SDK_CREDENTIALS_FILE_ENV = "HUAWEICLOUD_SDK_CREDENTIALS_FILE"
DEFAULT_CREDENTIALS_FILE = Path(".huaweicloud") / "credentials"
DEFAULT_PROFILE = "basic"

#: Refresh temporary credentials when less than this is left (or half their lifetime, if that
#: is shorter: a credential of 20 minutes is not refreshed on every call).
DEFAULT_REFRESH_MARGIN = 15 * 60.0
#: First and longest pause after a failed refresh (doubling in between, with jitter).
REFRESH_RETRY_BASE = 1.0
REFRESH_RETRY_MAX = 60.0


def mask(ak: str) -> str:
    """An AK as logs and descriptions show it: its first four characters."""
    return f"{ak[:4]}****"


@dataclass(frozen=True, slots=True, repr=False)
class Credential:
    """An AK/SK, with the security token and expiry of temporary credentials."""

    ak: str
    sk: str
    security_token: str | None = None
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.ak or not self.sk:
            raise ValueError("a credential needs a non-empty AK and SK")

    @property
    def temporary(self) -> bool:
        return self.security_token is not None

    def __repr__(self) -> str:
        kind = ", temporary" if self.temporary else ""
        expiry = f", expires_at={self.expires_at.isoformat()}" if self.expires_at else ""
        return f"Credential(ak={mask(self.ak)}{kind}{expiry})"


class CredentialProvider(ABC):
    """Gives the current credential; thread-safe."""

    @property
    @abstractmethod
    def temporary(self) -> bool:
        """Whether its credentials carry a security token (a caller of STS with one may ask
        for at most an hour, see :mod:`worker.bms.agency`)."""

    @abstractmethod
    def get(self) -> Credential:
        """A credential to sign with now."""

    def refresh(self, stale: Credential | None = None) -> Credential:
        """A credential after the API refused ``stale``: a new one if this provider can get
        one, else the same. Without ``stale``, the current one is replaced where possible."""
        return self.get()

    @abstractmethod
    def describe(self) -> str:
        """Where the credential comes from, for people (``bmsreboot fleet``); never a secret."""

    def close(self) -> None:  # noqa: B027 - optional: most providers hold nothing
        """Release what the provider holds (HTTP sessions)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class StaticCredentials(CredentialProvider):
    """One fixed AK/SK (and optional security token)."""

    def __init__(
        self, ak: str, sk: str, security_token: str | None = None, *, origin: str = "given"
    ) -> None:
        self._credential = Credential(ak, sk, security_token or None)
        self._origin = origin

    @property
    def temporary(self) -> bool:
        return self._credential.temporary

    def get(self) -> Credential:
        return self._credential

    def describe(self) -> str:
        token = " with a security token" if self.temporary else ""
        return f"static AK {mask(self._credential.ak)}{token} ({self._origin})"


class EnvCredentials(CredentialProvider):
    """AK/SK (and optional security token) from named environment variables, read once.

    Without names, the official SDK's: ``HUAWEICLOUD_SDK_AK``, ``HUAWEICLOUD_SDK_SK`` and, if
    set, ``HUAWEICLOUD_SDK_SECURITY_TOKEN``. A ``token_env`` that is named must be set."""

    def __init__(
        self,
        ak_env: str = SDK_AK_ENV,
        sk_env: str = SDK_SK_ENV,
        token_env: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        sdk_names = (ak_env, sk_env) == (SDK_AK_ENV, SDK_SK_ENV) and token_env is None
        self._names = (ak_env, sk_env, token_env or (SDK_SECURITY_TOKEN_ENV if sdk_names else None))
        ak, sk = _required_env(env, ak_env), _required_env(env, sk_env)
        if token_env is not None:
            token: str | None = _required_env(env, token_env)
        else:
            token = env.get(SDK_SECURITY_TOKEN_ENV) if sdk_names else None
        self._credential = Credential(ak, sk, token or None)

    @property
    def temporary(self) -> bool:
        return self._credential.temporary

    def get(self) -> Credential:
        return self._credential

    def describe(self) -> str:
        ak_env, sk_env, token_env = self._names
        text = f"environment variables {ak_env} and {sk_env}"
        if self._credential.temporary:
            text += f", security token from {token_env}"
        return text


def _required_env(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name)
    if not value:
        raise CredentialError(f"environment variable {name} is not set")
    return value


class FileCredentials(CredentialProvider):
    """The official SDK's credentials file: INI, keys ``ak``, ``sk`` and optional
    ``security_token`` in the section named by ``profile`` (default ``basic``, the section the
    SDK reads for ``BasicCredentials``). The path: ``path``, else
    ``$HUAWEICLOUD_SDK_CREDENTIALS_FILE``, else ``~/.huaweicloud/credentials``.

    Read at construction; :meth:`refresh` (after the API refused a credential) reads it again,
    so a file rewritten by whatever rotates it is picked up without a restart."""

    def __init__(
        self,
        path: str | Path | None = None,
        profile: str = DEFAULT_PROFILE,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        if path is None:
            path = env.get(SDK_CREDENTIALS_FILE_ENV) or Path.home() / DEFAULT_CREDENTIALS_FILE
        self.path = Path(path).expanduser()
        self.profile = profile
        self._lock = threading.Lock()
        self._credential = self._read()

    @property
    def temporary(self) -> bool:
        return self._credential.temporary

    def get(self) -> Credential:
        return self._credential

    def refresh(self, stale: Credential | None = None) -> Credential:
        with self._lock:
            if stale is None or self._credential == stale:
                try:
                    self._credential = self._read()
                except CredentialError as error:
                    log.warning("%s: could not read it again: %s", self.describe(), error)
            return self._credential

    def describe(self) -> str:
        return f"credentials file {self.path}, profile [{self.profile}]"

    def _read(self) -> Credential:
        # No interpolation: a '%' in a secret is just a character. The SDK's ConfigParser()
        # interpolates, which only differs for values holding '%' (never in Huawei's AK/SK).
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with self.path.open(encoding="utf-8") as handle:
                parser.read_file(handle)
        except FileNotFoundError:
            raise CredentialError(f"credentials file {self.path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialError(
                f"credentials file {self.path} cannot be read: {type(exc).__name__}"
            ) from None
        except configparser.Error as exc:
            # The parser's message names the line; it may quote that line, so only its kind.
            line = getattr(exc, "lineno", None)
            where = f" (line {line})" if line else ""
            raise CredentialError(
                f"credentials file {self.path} is not an INI file: {type(exc).__name__}{where}"
            ) from None
        if not parser.has_section(self.profile):
            sections = ", ".join(parser.sections()) or "none"
            raise CredentialError(
                f"credentials file {self.path} has no profile [{self.profile}] "
                f"(its profiles: {sections})"
            )
        section = parser[self.profile]
        missing = [key for key in ("ak", "sk") if not section.get(key, "").strip()]
        if missing:
            raise CredentialError(
                f"profile [{self.profile}] of credentials file {self.path} has no "
                + " and no ".join(missing)
            )
        token = section.get("security_token", "").strip() or None
        return Credential(section["ak"].strip(), section["sk"].strip(), token)


@dataclass(frozen=True, slots=True)
class _Held:
    credential: Credential
    expires_at: datetime
    refresh_at: datetime


def retry_delay(failures: int, base: float, cap: float) -> float:
    """The pause after ``failures`` failed refreshes in a row: doubling from ``base`` up to
    ``cap``, less up to a fifth at random so that many processes do not retry in step."""
    delay = min(cap, base * 2.0 ** max(failures - 1, 0))
    return delay * random.uniform(0.8, 1.0)


class RefreshingCredentials(CredentialProvider):
    """Temporary credentials that expire, fetched by :meth:`_fetch`.

    - A credential is used until less than ``refresh_margin`` seconds (or half its lifetime, if
      shorter) are left; then the next caller refreshes it.
    - One refresh at a time per provider (a lock). While it runs, other threads keep the
      current credential if it has not expired; only when there is none valid do they wait for
      the refresh.
    - A failed refresh is retried after a pause (:func:`retry_delay`), never in a tight loop:
      until then callers keep the current credential while it is valid, and get the last
      error at once when it is not.
    - Logs say when a credential was fetched, when it expires and why a refresh failed; never
      the SK or the token.

    ``clock`` (aware UTC datetimes) and ``monotonic`` exist for tests.
    """

    def __init__(
        self,
        *,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        retry_base: float = REFRESH_RETRY_BASE,
        retry_max: float = REFRESH_RETRY_MAX,
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        if refresh_margin < 0 or retry_base <= 0 or retry_max < retry_base:
            raise ValueError("refresh_margin >= 0 and 0 < retry_base <= retry_max")
        self.refresh_margin = timedelta(seconds=refresh_margin)
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._clock = clock or (lambda: datetime.now(UTC))
        self._monotonic = monotonic or time.monotonic
        self._lock = threading.Lock()
        self._held: _Held | None = None
        self._failures = 0
        self._retry_at = float("-inf")
        self._last_error: BmsError | None = None

    @property
    def temporary(self) -> bool:
        return True

    @abstractmethod
    def _fetch(self) -> Credential:
        """A new credential with its ``expires_at``; raises a :class:`BmsError`."""

    def get(self) -> Credential:
        held = self._held
        if held is not None and self._clock() < held.refresh_at:
            return held.credential
        return self._renew(force=False, stale=None)

    def refresh(self, stale: Credential | None = None) -> Credential:
        return self._renew(force=True, stale=stale)

    def _renew(self, *, force: bool, stale: Credential | None) -> Credential:
        held = self._held
        if not force and held is not None and self._clock() < held.expires_at:
            # Still valid: refresh if nobody else is, else keep signing with this one.
            if not self._lock.acquire(blocking=False):
                return held.credential
        else:
            self._lock.acquire()
        try:
            return self._renew_locked(force=force, stale=stale)
        finally:
            self._lock.release()

    def _renew_locked(self, *, force: bool, stale: Credential | None) -> Credential:
        now = self._clock()
        held = self._held
        valid = held if held is not None and now < held.expires_at else None
        if valid is not None:
            if not force and now < valid.refresh_at:
                return valid.credential  # another thread refreshed it meanwhile
            if force and stale is not None and valid.credential != stale:
                return valid.credential  # the refused credential was already replaced
        if self._monotonic() < self._retry_at:
            if valid is not None:
                return valid.credential
            assert self._last_error is not None
            raise copy.copy(self._last_error)
        try:
            credential = self._fetch()
            self._held = self._hold(credential, self._clock())
        except BmsError as error:
            self._failures += 1
            pause = retry_delay(self._failures, self._retry_base, self._retry_max)
            self._retry_at = self._monotonic() + pause
            self._last_error = error
            log.warning(
                "%s: no new credential (%s); next attempt in %.1f s%s",
                self.describe(),
                error,
                pause,
                ", the current one is still valid" if valid is not None else "",
            )
            if valid is not None:
                return valid.credential
            raise
        self._failures = 0
        self._retry_at = float("-inf")
        self._last_error = None
        log.info(
            "%s: new temporary credential %s, expires at %s, refresh from %s",
            self.describe(),
            mask(credential.ak),
            self._held.expires_at.isoformat(),
            self._held.refresh_at.isoformat(),
        )
        return credential

    def _hold(self, credential: Credential, now: datetime) -> _Held:
        expires_at = credential.expires_at
        if expires_at is None:
            raise ProtocolError("the temporary credential came without an expiry")
        lifetime = expires_at - now
        if lifetime <= timedelta(0):
            raise ProtocolError(
                f"the temporary credential expired at {expires_at.isoformat()}, before it "
                f"arrived (is this machine's clock right? it says {now.isoformat()})"
            )
        margin = min(self.refresh_margin, lifetime / 2)
        return _Held(credential, expires_at, expires_at - margin)
