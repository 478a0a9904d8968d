"""The one typed settings object, read from the environment.

Every field is read from ``BMSREBOOT_<FIELD>`` unless it says otherwise. Credentials use the
official SDK's variable names (``HUAWEICLOUD_SDK_AK`` / ``HUAWEICLOUD_SDK_SK`` /
``HUAWEICLOUD_SDK_SECURITY_TOKEN``) so an operator's existing environment works unchanged.
Secrets are ``SecretStr``: they print as ``**********``.

With nothing configured the project runs on embedded defaults under ``data_dir``: a SQLite audit
database and Celery's SQLAlchemy transport on SQLite as the broker. Production sets
``BMSREBOOT_BROKER_URL`` (Redis) and ``BMSREBOOT_DATABASE_URL`` (PostgreSQL).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ImproperlyConfigured(RuntimeError):
    """Settings that would make the pipeline unsafe; the worker refuses to start. Here, not
    in ``worker.celery`` (which raises it), so that the CLI can name it in one line when
    ``worker.celery``'s import is what failed."""


def is_redis_url(url: str) -> bool:
    """Whether a broker URL is Redis (``redis://``, ``rediss://``, or ``sentinel://``: Redis
    through its sentinels): then the budgets, the metrics and beat's schedule live in Redis
    too, and the worker reads its queues in order (``worker.celery``)."""
    return url.split("://", 1)[0].lower() in ("redis", "rediss", "sentinel")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bmsreboot"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BMSREBOOT_", extra="ignore", populate_by_name=True
    )

    # --- where state lives -------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Directory for the embedded SQLite audit database and broker.",
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL (redis://...). Unset: SQLAlchemy transport on SQLite."
    )
    database_url: str | None = Field(
        None, description="Audit database URL (postgresql+psycopg://...). Unset: SQLite."
    )
    broker_transport_options: dict[str, Any] = Field(
        default_factory=dict,
        description="A JSON object of kombu Redis transport options, also used by the "
        "budgets', the metrics' and beat's Redis clients (worker.redis_client): master_name "
        "(required with sentinel:// URLs), sentinel_kwargs, socket_timeout, "
        "socket_connect_timeout, health_check_interval. visibility_timeout and "
        "queue_order_strategy are the project's own (BMSREBOOT_VISIBILITY_TIMEOUT).",
    )

    # --- the cloud ---------------------------------------------------------------------------
    region: str = Field("cn-north-4", description="Huawei Cloud region.")
    bms_endpoint: str | None = Field(
        None, description="Full BMS base URL; overrides https://bms.{region}.myhuaweicloud.com."
    )
    iam_endpoint: str | None = Field(
        None, description="Full IAM base URL; overrides https://iam.{region}.myhuaweicloud.com."
    )
    ak: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("HUAWEICLOUD_SDK_AK", "BMSREBOOT_AK"),
        description="Access key for AK/SK signing (env HUAWEICLOUD_SDK_AK).",
    )
    sk: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("HUAWEICLOUD_SDK_SK", "BMSREBOOT_SK"),
        description="Secret key for AK/SK signing (env HUAWEICLOUD_SDK_SK).",
    )
    security_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("HUAWEICLOUD_SDK_SECURITY_TOKEN", "BMSREBOOT_SECURITY_TOKEN"),
        description="Security token of a temporary AK/SK (env HUAWEICLOUD_SDK_SECURITY_TOKEN): "
        "sent as X-Security-Token and signed. Unset: the AK/SK is permanent.",
    )
    iam_user: str | None = Field(None, description="IAM user for password-token auth.")
    iam_password: SecretStr | None = Field(None, description="IAM password for token auth.")
    iam_domain: str | None = Field(None, description="IAM account (domain) name for token auth.")
    sts_endpoint: str | None = Field(
        None,
        description="Full STS base URL (agency credentials); overrides "
        "https://sts.{region}.myhuaweicloud.com.",
    )
    metadata_url: str = Field(
        "http://169.254.169.254",
        description="Base URL of the ECS/BMS metadata service (metadata credentials); tests "
        "point it at the simulator.",
    )
    credentials_refresh_margin: float = Field(
        900.0,
        ge=0,
        description="Temporary credentials (metadata, agency) are refreshed when fewer than "
        "this many seconds are left before they expire (or half their lifetime, if shorter).",
    )
    ca_bundle: str | None = Field(None, description="Path to a CA bundle for TLS verification.")
    verify_tls: bool = Field(True, description="Verify TLS certificates (never off in production).")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    read_timeout: float = Field(30.0, gt=0, description="Seconds to wait for a response.")

    allowed_projects: str | None = Field(
        None,
        description="Comma-separated project ids this deployment may touch; a request for any "
        "other is rejected with no API call. Unset: any project the credentials reach.",
    )
    fleet_file: Path | None = Field(
        None,
        description="A TOML file of the accounts (credentials), regions (endpoints) and "
        "projects this deployment serves (worker.fleet; `bmsreboot fleet check`): each "
        "request's project picks its account, region and endpoints, and a project outside it "
        "is rejected with no API call. Unset: the settings above describe one account.",
    )

    # --- requests ----------------------------------------------------------------------------
    max_request_servers: int = Field(
        1_000_000, gt=0, description="Largest number of server ids one request may hold."
    )
    default_batch_size: int = Field(1000, ge=1, le=1000, description="Servers per API call.")

    # --- the default rollout policy (a producer's own fields win) ---------------------------
    default_max_in_flight: int | None = Field(
        None, ge=1, description="Batches of one request submitted or in flight at once."
    )
    default_canary_size: int | None = Field(
        None, ge=1, le=1000, description="Servers of the first batch, which must all succeed."
    )
    default_failure_threshold: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Percent of servers failed, unknown or unhealthy that halts.",
    )
    default_not_after: str | None = Field(
        None, description="A window from intake (2h, 90m): no batch is released after it."
    )

    # --- submission and polling (seconds) ----------------------------------------------------
    submit_retry_base: float = Field(5.0, gt=0, description="First retry delay of a submit.")
    submit_retry_max: float = Field(300.0, gt=0, description="Cap of the submit retry delay.")
    submit_max_attempts: int = Field(10, ge=1, description="Not-accepted submits before giving up.")
    submit_stale_margin: float = Field(
        60.0,
        ge=0,
        description="Beyond the HTTP timeouts: a batch submitting this long lost its worker.",
    )
    poll_first_delay: float = Field(5.0, ge=0, description="Delay of the first poll of a job.")
    poll_max_interval: float = Field(60.0, gt=0, description="Cap of the delay between polls.")
    poll_jitter: float = Field(0.2, ge=0, le=1, description="Random fraction added to delays.")
    job_deadline: float = Field(3600.0, gt=0, description="A job older than this is timed_out.")
    job_missing_after: float = Field(
        180.0,
        ge=0,
        description="A job the API has answered 404 for this long makes its batch unknown.",
    )
    poll_history: int = Field(
        20, ge=1, description="Recently finished jobs of a project that teach its job duration."
    )

    # --- API budgets, shared by every worker (per endpoint, project and route) ----------------
    action_rate_limit: int = Field(
        50, ge=1, description="POSTs per minute per project on /baremetalservers/action."
    )
    action_burst: int = Field(1, ge=1, description="POSTs that may go back to back at once.")
    job_rate_limit: int = Field(2000, ge=1, description="GETs per minute per project on /jobs.")
    job_burst: int = Field(1, ge=1, description="GETs that may go back to back at once.")
    list_rate_limit: int = Field(
        500,
        ge=1,
        description="Inventory reads (server list pages, one server's details) per minute per "
        "project.",
    )
    list_burst: int = Field(1, ge=1, description="Inventory reads that may go back to back.")
    throttle_cooldown: float = Field(
        5.0, gt=0, description="Pause of a project's route after a 429 without Retry-After."
    )

    # --- completion callbacks -------------------------------------------------------------
    callback_expires: float = Field(
        86400.0,
        gt=0,
        description="Seconds a completion callback waits in its queue before it expires.",
    )

    # --- webhooks and chat notifications (worker.webhooks) -----------------------------------
    webhook_url: str | None = Field(
        None,
        description="A URL every event is POSTed to (besides a request's own notify_url). "
        "Unset: only requests that give a notify_url get webhooks.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="The Standard Webhooks signing secret: whsec_ followed by base64 of 24 to "
        "64 random bytes. Unset: webhooks are sent unsigned (a warning is logged).",
    )
    webhook_retry_hours: float = Field(
        24.0, gt=0, description="Hours a delivery is retried before it is failed."
    )
    webhook_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds to wait for a receiver's answer (connecting takes at most "
        "BMSREBOOT_CONNECT_TIMEOUT).",
    )
    webhook_retry_base: float = Field(
        5.0, gt=0, description="First retry delay of a delivery; doubles each attempt."
    )
    webhook_retry_max: float = Field(
        3600.0, gt=0, description="Cap of the delay between two attempts of a delivery."
    )
    notify_apprise: str | None = Field(
        None,
        description="Apprise URLs (slack://, msteams://, tgram://, mailto://, json://, ...), "
        "space or comma separated: a one-line message for request.halted, server.unhealthy "
        "and request.finished. Unset: no chat messages.",
    )

    # --- the alert gate before each wave (worker.pipeline.gate) -------------------------------
    prometheus_url: str | None = Field(
        None,
        description="The Prometheus the gate asks (http://host:9090) before each wave. Unset: "
        "no gate, unless a request gives its own gate_query (then it is held: fail-closed).",
    )
    gate_query: str = Field(
        'ALERTS{alertstate="firing",severity="critical"}',
        min_length=1,
        description="The PromQL a request's gate evaluates when it gives none: any series "
        "returned holds the request's next batches.",
    )
    gate_exclude: str | None = Field(
        None,
        description="A regular expression on alertname (anchored): series it matches do not "
        "close the gate (alerts the reboot itself causes). Unset: none excluded.",
    )
    gate_interval: float = Field(
        30.0, gt=0, description="Seconds between two checks of a closed gate."
    )
    gate_timeout: float = Field(
        3600.0,
        gt=0,
        le=86400,
        description="Seconds a gate may stay closed before its request is halted.",
    )

    # --- broken input and answers -----------------------------------------------------------
    preflight: bool = Field(
        True,
        description="Read each batch's servers from the inventory just before its POST; send "
        "none that is locked, not ACTIVE, busy or on a host that is down.",
    )
    verify: bool = Field(
        True,
        description="Count a reboot only once the inventory shows the server back after its "
        "job (ACTIVE, idle, not locked, its host up).",
    )
    health_timeout: float = Field(
        1200.0, gt=0, description="Seconds a rebooted server has to come back: then unhealthy."
    )
    verify_first_delay: float = Field(
        60.0,
        ge=0,
        description="The first check of a batch's servers after its job, until the project "
        "has a learned boot time.",
    )
    verify_max_interval: float = Field(
        30.0, gt=0, description="Cap of the delay between two checks of a verifying batch."
    )
    probe_timeout: float = Field(
        3.0, gt=0, description="Seconds a health check's TCP connect or HTTP GET may take."
    )
    preflight_max_age: float = Field(
        10.0,
        ge=0,
        description="Seconds one worker process reuses a project's server list for the "
        "pre-flight checks of the batches that follow.",
    )
    isolate_unknown_servers: bool = Field(
        True,
        description="Split a batch the API refused for an unknown server to find that server.",
    )

    # --- Alertmanager silences while servers reboot (worker.pipeline.silences) ---------------
    alertmanager_url: str | None = Field(
        None,
        description="Alertmanager's base URL (http://host:9093): before each batch's POST, one "
        "silence of its servers, expired once they are verified. Unset: no silences.",
    )
    silence_matchers: str = Field(
        'instance=~"{names}"',
        description="The silence's matchers, as Alertmanager writes them (comma separated); "
        "{names}, {ids} and {ips} in a =~ matcher's value become the batch's servers as a "
        "regex alternation (each value escaped).",
    )
    silence_margin: float = Field(
        900.0,
        ge=0,
        description="Seconds a silence lasts beyond the expected job and boot time (and, while "
        "the batch verifies, beyond its verification deadline).",
    )
    silence_required: bool = Field(
        False,
        description="A batch whose silence cannot be created waits and tries again instead of "
        "rebooting unsilenced.",
    )

    # --- schedules (beat) -------------------------------------------------------------------
    schedule_file: Path | None = Field(
        None, description="The TOML file of scheduled reboots (see worker.schedules)."
    )
    schedule_ids_dir: Path | None = Field(
        None,
        description="A directory an entry's servers_file may be in besides the schedule file's "
        "own (default: only the schedule file's directory).",
    )
    schedule_grace: float = Field(
        600.0,
        ge=0,
        description="Only the latest missed tick fires, and only if missed by at most this; "
        "older ticks are skipped, never fired late.",
    )
    beat_lock_timeout: float = Field(
        60.0, gt=5, description="With Redis: a beat that stops renewing its lock is replaced."
    )

    # --- the reconciler (beat) -------------------------------------------------------------
    reconcile_interval: float = Field(
        30.0, gt=0, description="Seconds between runs of bmsreboot.reconcile."
    )
    reconcile_grace: float = Field(
        15.0, ge=0, description="How overdue work must be before the reconciler re-drives it."
    )

    # --- Celery ------------------------------------------------------------------------------
    visibility_timeout: int = Field(
        3600, gt=0, description="Redis visibility timeout; every countdown must stay far below it."
    )
    task_time_limit: int = Field(300, gt=0, description="Hard time limit of one task run.")
    eta_task_limit: int = Field(
        5000,
        ge=100,
        description="Countdown messages one worker holds at most (polls are): above it, it "
        "takes no more until some are due.",
    )
    max_memory_per_child: int = Field(
        393216,
        ge=0,
        description="KiB (Celery's worker_max_memory_per_child; 0: no bound): a pool child "
        "whose peak RSS passed it is replaced once its task has finished. 384 MiB: about 3 "
        "times a warm child (97-124 MiB in benchmarks/soak.py) and above every peak measured "
        "(157 MiB in a child, 229 MiB in the main process it is forked from, recording a "
        "million ids), so only a child that kept growing reaches it (BENCHMARKS.md, Memory "
        "over a long run).",
    )

    # --- logs -------------------------------------------------------------------------------
    log_format: str = Field(
        "text", pattern="^(text|json)$", description="text, or json: one JSON object a line."
    )

    # --- diagnostics (off by default) ------------------------------------------------------
    tracemalloc_dir: Path | None = Field(
        None,
        description="A diagnostic, never for production: each pool child traces its "
        "allocations (tracemalloc) and reports the sites that grew in this directory "
        "(worker.diagnostics).",
    )
    tracemalloc_interval: float = Field(
        60.0, gt=0, description="Seconds between two tracemalloc reports of a pool child."
    )

    # --- housekeeping ------------------------------------------------------------------------
    retention_days: int = Field(90, ge=1, description="Finished requests older than this purge.")

    @field_validator("broker_transport_options")
    @classmethod
    def _own_transport_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        ours = sorted(set(v) & {"visibility_timeout", "queue_order_strategy"})
        if ours:
            raise ValueError(
                f"{', '.join(ours)}: set by the project (BMSREBOOT_VISIBILITY_TIMEOUT; the "
                "queues are read in priority order), not in the transport options"
            )
        return v

    @field_validator("gate_exclude")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v or None

    @field_validator("silence_matchers")
    @classmethod
    def _matchers(cls, v: str) -> str:
        from worker.silence_template import check_template

        check_template(v)
        return v

    @field_validator(
        "bms_endpoint",
        "iam_endpoint",
        "sts_endpoint",
        "metadata_url",
        "alertmanager_url",
        "prometheus_url",
    )
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    # --- derived values ----------------------------------------------------------------------
    @property
    def policy_defaults(self) -> dict[str, object]:
        """The rollout policy's defaults, by intake field name (unset ones left out)."""
        values = {
            "max_in_flight": self.default_max_in_flight,
            "canary_size": self.default_canary_size,
            "failure_threshold": self.default_failure_threshold,
            "not_after": self.default_not_after,
        }
        if self.prometheus_url:
            # With a Prometheus to ask, every request is gated: the deployment's query,
            # exclusion and timeout unless it gives its own (recorded on the request).
            values.update(
                gate_query=self.gate_query,
                gate_exclude=self.gate_exclude,
                gate_timeout=self.gate_timeout,
            )
        return {k: v for k, v in values.items() if v is not None}

    @property
    def allowed_project_ids(self) -> frozenset[str] | None:
        """``allowed_projects`` as a set of lower-case ids (None: no list)."""
        if self.allowed_projects is None or not self.allowed_projects.strip():
            return None
        return frozenset(p.strip().lower() for p in self.allowed_projects.split(",") if p.strip())

    @property
    def apprise_urls(self) -> list[str]:
        """``notify_apprise`` split into its URLs: at spaces or commas that come before the
        next ``scheme://`` (so a comma inside a URL, ``mailto://...?to=a@x,b@x``, stays)."""
        if not self.notify_apprise:
            return []
        parts = re.split(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.\-]*://)", self.notify_apprise.strip())
        return [p.strip(" ,\t\n") for p in parts if p.strip(" ,\t\n")]

    @property
    def effective_bms_endpoint(self) -> str:
        return self.bms_endpoint or f"https://bms.{self.region}.myhuaweicloud.com"

    @property
    def effective_iam_endpoint(self) -> str:
        return self.iam_endpoint or f"https://iam.{self.region}.myhuaweicloud.com"

    @property
    def effective_sts_endpoint(self) -> str:
        return self.sts_endpoint or f"https://sts.{self.region}.myhuaweicloud.com"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'audit.db'}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def embedded_broker(self) -> bool:
        """The broker is the zero-setup default: Celery's SQLAlchemy transport in the data dir."""
        return self.broker_url is None

    @property
    def embedded_database(self) -> bool:
        """The audit database is the zero-setup default: SQLite in the data dir."""
        return self.database_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build their own ``Settings`` instead."""
    return Settings()
