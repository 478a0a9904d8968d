"""What the commands' arguments and options accept, checked the same way everywhere: a request
or server id is a UUID, a project id 32 hex characters, a job id what the API's paths take, a
``--limit`` at least 1. A value that is not one is a usage error naming the option."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    # click >= 8.4 types ParamType by the value it converts to; older ones are not generic.
    _UuidType = click.ParamType[uuid.UUID]
    _TextType = click.ParamType[str]
else:
    _UuidType = _TextType = click.ParamType


def parse_uuid(value: str | uuid.UUID, what: str = "request id") -> uuid.UUID:
    """``value`` as a UUID, or a usage error saying it is not a ``what``."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise click.BadParameter(f"not a {what} (a UUID): {value!r}") from None


class UuidId(_UuidType):
    """A request or server id: a UUID (given in any case, with or without hyphens)."""

    name = "uuid"

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_uuid(value, self.what)
        except click.BadParameter as error:
            self.fail(error.message, param, ctx)


class ProjectId(_TextType):
    """A Huawei Cloud project id: 32 hexadecimal characters (as intake checks it)."""

    name = "project_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from worker.pipeline.validation import PROJECT_ID_RE

        text = str(value).strip()
        if not PROJECT_ID_RE.match(text):
            self.fail(f"not a project id (32 hexadecimal characters): {value!r}", param, ctx)
        return text


class JobId(_TextType):
    """A job id as the client puts it in a path: letters, digits, '.', '_' or '-'."""

    name = "job_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from worker.bms.client import MAX_JOB_ID, _path_id

        try:
            text = _path_id("job_id", str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)
        if len(text) > MAX_JOB_ID:
            self.fail(f"job_id is longer than {MAX_JOB_ID} characters", param, ctx)
        return text


REQUEST_ID = UuidId("request id")
SERVER_ID = UuidId("server id")
#: ``history ID``: a request's events, or a server's reboots.
REQUEST_OR_SERVER_ID = UuidId("request or server id")
PROJECT_ID = ProjectId()
JOB_ID = JobId()
#: ``--port``: 0 asks the system for a free one where the command says so.
PORT = click.IntRange(1, 65535)


def limit_option(default: int = 50) -> Callable[[F], F]:
    """``--limit N``: how many rows a read command prints (at least 1)."""
    return click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help="At most this many (1 or more).",
    )
