"""The knobs of the BMS API simulator: one frozen ``SimulatorConfig``.

Every field is also a ``bmsreboot simulator`` option (``--job-duration`` ...) and can be changed at
runtime through ``POST /_simulator/config`` (JSON with the same field names; sets as lists). Both
paths go through :func:`patched`, so the CLI, the HTTP endpoint and ``SimulatorServer`` agree on
names and types. A job takes the knobs that shape it (duration, failures, stuck servers) when it is
created; later changes apply to new jobs only. A reboot takes ``boot_seconds`` and whether the
server comes back (``no_return_fraction``/``no_return_servers``) when it is accepted.

The inventory (``servers`` or ``inventory``, see ``worker.simulator.inventory``) is rebuilt when
either of those two knobs changes, and by a reset.

:func:`server_fails` and :func:`server_never_returns` are public so tests elsewhere can compute
the expected outcome of a server.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_AK = "HPUAEXAMPLEAK0000001"
DEFAULT_SK = "exampleSecretKey0000000000000000000000001"
DEFAULT_IAM_DOMAIN = "demo-domain"
DEFAULT_IAM_USER = "demo-user"
DEFAULT_IAM_PASSWORD = "demo-password"  # noqa: S105 - the documented local demo login
#: The project of the reference's captured requests, under the region-named project.
DEFAULT_PROJECT_NAME = "cn-north-4"
DEFAULT_PROJECT_ID = "0123456789abcdef0123456789abcdef"
#: Route -> the IAM permission it needs, for ``denied_permissions``.
PERMISSIONS = {"servers": "bms:servers:list", "server": "bms:servers:get"}
#: Seals temporary credentials (``sts.py``); simulators that share it accept each other's.
DEFAULT_STS_SECRET = "bmsreboot-simulator-sts-secret"  # noqa: S105 - a local test value


def iam_user_key(domain: str, user: str) -> str:
    """The key of ``SimulatorConfig.iam_users``: ``"<domain>/<user>"``."""
    return f"{domain}/{user}"


@dataclass(frozen=True)
class SimulatorConfig:
    """Behaviour of the simulator. Frozen: change it with :func:`patched` (or ``configure``)."""

    job_duration: float = 2.0
    job_jitter: float = 0.0
    fail_fraction: float = 0.0
    fail_servers: frozenset[str] = frozenset()
    fail_code: str = "BMS.0036"
    unknown_servers: frozenset[str] = frozenset()
    stuck_servers: frozenset[str] = frozenset()
    action_rate_limit: int | None = 50
    job_rate_limit: int | None = 2000
    #: ListBareMetalServers, per minute per project (the documented 500).
    list_rate_limit: int | None = 500
    #: One server's details, per minute per project (the documented 1000).
    server_rate_limit: int | None = 1000
    rate_limit_scale: float = 1.0
    retry_after: float | None = None
    fault_5xx: float = 0.0
    drop_after_accept: float = 0.0
    latency: float = 0.0
    seed: int | None = None
    credentials: dict[str, str] = field(default_factory=lambda: {DEFAULT_AK: DEFAULT_SK})
    iam_users: dict[str, str] = field(
        default_factory=lambda: {
            iam_user_key(DEFAULT_IAM_DOMAIN, DEFAULT_IAM_USER): DEFAULT_IAM_PASSWORD
        }
    )
    #: Project name -> id for token scopes by name; unknown names get a derived id.
    projects: dict[str, str] = field(
        default_factory=lambda: {DEFAULT_PROJECT_NAME: DEFAULT_PROJECT_ID}
    )
    token_ttl: float = 86400.0
    job_ttl: float = 86400.0
    #: The gateway locks an AK for 5 minutes after more than 5 consecutive signature failures.
    ak_lockout_failures: int | None = 5
    ak_lockout_seconds: float = 300.0
    #: Generate this many servers in every project (``bms-00001``...); 0: none.
    servers: int = 0
    #: A JSON-lines file of servers (see ``worker.simulator.inventory``); exclusive with servers.
    inventory: str | None = None
    #: Seconds a rebooted server stays HARD_REBOOT after its sub-job's SUCCESS (firmware, boot).
    boot_seconds: float = 0.0
    #: Share of rebooted servers that end ERROR instead of coming back (sha256, see below).
    no_return_fraction: float = 0.0
    #: Servers that never come back from a reboot (end ERROR).
    no_return_servers: frozenset[str] = frozenset()
    #: IAM permissions the caller lacks: each refuses its route with 403 (see PERMISSIONS).
    denied_permissions: frozenset[str] = frozenset()
    # --- temporary credentials (sts.py): the metadata service and STS ----------------------
    #: Seconds a credential from GET /openstack/latest/securitykey stays valid.
    metadata_credential_ttl: float = 3600.0
    #: Whether the host has an agency: off, the metadata service answers 401 with
    #: "Please configure Cloud Service Agency first".
    metadata_agency: bool = True
    #: Seconds an assumed agency's credential stays valid; None: the request's duration_seconds.
    agency_credential_ttl: float | None = None
    #: Agency URNs STS knows; empty: any.
    agencies: frozenset[str] = frozenset()
    #: As the gateway: a temporary AK needs its X-Security-Token, signed, unexpired.
    security_token: bool = True
    sts_secret: str = DEFAULT_STS_SECRET

    def __post_init__(self) -> None:
        for name in ("fail_fraction", "fault_5xx", "drop_after_accept", "no_return_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        for name in (
            "job_duration",
            "job_jitter",
            "latency",
            "token_ttl",
            "job_ttl",
            "servers",
            "boot_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.rate_limit_scale <= 0:
            raise ValueError("rate_limit_scale must be positive")
        if self.servers and self.inventory is not None:
            raise ValueError("servers and inventory exclude each other: give one")
        unknown = self.denied_permissions - set(PERMISSIONS.values())
        if unknown:
            raise ValueError(
                f"denied_permissions takes {', '.join(sorted(PERMISSIONS.values()))}, "
                f"not {', '.join(sorted(unknown))}"
            )
        if self.metadata_credential_ttl <= 0:
            raise ValueError("metadata_credential_ttl must be positive")
        if self.agency_credential_ttl is not None and self.agency_credential_ttl <= 0:
            raise ValueError("agency_credential_ttl must be positive")
        if not self.sts_secret:
            raise ValueError("sts_secret must not be empty")

    @property
    def has_inventory(self) -> bool:
        """Whether servers exist (``servers`` or ``inventory``); without, actions take any id."""
        return bool(self.servers) or self.inventory is not None

    def rate_limit(self, route: str) -> int | None:
        """Requests per minute per project on ``route`` ("action", "jobs", "servers" or
        "server"); None is unlimited."""
        limits = {
            "action": self.action_rate_limit,
            "jobs": self.job_rate_limit,
            "servers": self.list_rate_limit,
            "server": self.server_rate_limit,
        }
        base = limits.get(route)
        if base is None:
            return None
        return max(1, round(base * self.rate_limit_scale))


def failure_point(server_id: str) -> float:
    """sha256(server_id) mapped to [0, 1): the first 8 digest bytes over 2**64."""
    digest = hashlib.sha256(server_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def server_fails(server_id: str, config: SimulatorConfig) -> bool:
    """Whether a power action on ``server_id`` ends in a FAIL sub-job under ``config``."""
    return server_id in config.fail_servers or failure_point(server_id) < config.fail_fraction


def server_never_returns(server_id: str, config: SimulatorConfig) -> bool:
    """Whether a reboot of ``server_id`` ends ERROR instead of ACTIVE under ``config``.

    The point is sha256 of ``"no-return:" + server_id``, not of the id alone: the same point as
    :func:`server_fails` would pick the servers whose sub-job fails, which are never rebooted."""
    return (
        server_id in config.no_return_servers
        or failure_point(f"no-return:{server_id}") < config.no_return_fraction
    )


# --- conversion of patches (JSON bodies and CLI options) ------------------------------------


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError("expected a number")
    return float(value)


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def inner(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "off", "")):
            return None
        return convert(value)

    return inner


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError("expected an integer")
    return int(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _items(value: Any) -> list[str]:
    # A JSON list, a CLI tuple of repeated options, or one comma-separated string.
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple | set | frozenset):
        raise TypeError("expected a list")
    return [part.strip() for item in value for part in _str(item).split(",") if part.strip()]


def _bool(value: Any) -> bool:
    # A JSON boolean, or on/off (true/false, yes/no, 1/0) from the CLI.
    if isinstance(value, bool):
        return value
    text = _str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise TypeError("expected on or off")


def _set(value: Any) -> frozenset[str]:
    return frozenset(_items(value))


def _dict(value: Any) -> dict[str, str]:
    # A JSON object, or KEY=VALUE items from the CLI.
    if isinstance(value, Mapping):
        return {_str(k): _str(v) for k, v in value.items()}
    pairs = [item.partition("=") for item in _items(value)]
    if any(not sep or not key for key, sep, _ in pairs):
        raise TypeError("expected KEY=VALUE items")
    return {key: val for key, _, val in pairs}


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "job_duration": _float,
    "job_jitter": _float,
    "fail_fraction": _float,
    "fail_servers": _set,
    "fail_code": _str,
    "unknown_servers": _set,
    "stuck_servers": _set,
    "action_rate_limit": _optional(_int),
    "job_rate_limit": _optional(_int),
    "list_rate_limit": _optional(_int),
    "server_rate_limit": _optional(_int),
    "rate_limit_scale": _float,
    "retry_after": _optional(_float),
    "fault_5xx": _float,
    "drop_after_accept": _float,
    "latency": _float,
    "seed": _optional(_int),
    "credentials": _dict,
    "iam_users": _dict,
    "projects": _dict,
    "token_ttl": _float,
    "job_ttl": _float,
    "ak_lockout_failures": _optional(_int),
    "ak_lockout_seconds": _float,
    "servers": _int,
    "inventory": _optional(_str),
    "boot_seconds": _float,
    "no_return_fraction": _float,
    "no_return_servers": _set,
    "denied_permissions": _set,
    "metadata_credential_ttl": _float,
    "metadata_agency": _bool,
    "agency_credential_ttl": _optional(_float),
    "agencies": _set,
    "security_token": _bool,
    "sts_secret": _str,
}
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(SimulatorConfig))
assert set(FIELD_NAMES) == set(_CONVERTERS), "every knob needs a converter"

#: Fields whose values are secrets; shown masked by :func:`to_json`.
_SECRET_VALUES = ("credentials", "iam_users", "sts_secret")


def patched(config: SimulatorConfig, patch: Mapping[str, Any]) -> SimulatorConfig:
    """``config`` with the fields of ``patch`` replaced. Raises ValueError naming a bad field."""
    changes: dict[str, Any] = {}
    for name, value in patch.items():
        convert = _CONVERTERS.get(name)
        if convert is None:
            raise ValueError(f"unknown knob {name!r}")
        try:
            changes[name] = convert(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad value for {name}: {exc}") from None
    return dataclasses.replace(config, **changes)


def to_json(config: SimulatorConfig) -> dict[str, Any]:
    """The knobs as JSON values: sets as sorted lists, secrets (SKs, passwords) masked."""
    out: dict[str, Any] = {}
    for name in FIELD_NAMES:
        value = getattr(config, name)
        if isinstance(value, frozenset):
            value = sorted(value)
        elif name in _SECRET_VALUES:
            value = dict.fromkeys(value, "******") if isinstance(value, dict) else "******"
        elif isinstance(value, dict):
            value = dict(value)
        out[name] = value
    return out
