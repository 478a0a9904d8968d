"""One line for every error an operator can meet, never a traceback.

Click prints a usage error as four lines (the usage, a hint, a blank line, the error);
:class:`OneLineGroup` prints it as one, with the hint at its end. The context managers below
turn what the environment can do to a command (a broker that cannot be reached, an audit
database that cannot be opened, a port in use) into a :class:`click.ClickException` that says
what is wrong and what to do. URLs are always printed without their password.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import click

#: ``scheme://user:password@`` in a string that is not a URL we could parse.
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def safe_url(url: str) -> str:
    """``url`` without its password, for printing (a broker's or a database's; each URL of
    a ``;``-separated failover list such as ``sentinel://:pw@a;sentinel://:pw@b``)."""
    from kombu.utils.url import maybe_sanitize_url

    if ";" in url and "://" in url.split(";", 1)[1]:
        return ";".join(safe_url(part) for part in url.split(";"))
    try:
        return str(maybe_sanitize_url(url, mask="***"))
    except Exception:  # an unparsable URL is masked by pattern instead
        return _PASSWORD_IN_URL.sub(r"\1***@", url)


def first_line(error: BaseException, *secrets: str | None) -> str:
    """The first line of what ``error`` says (SQLAlchemy adds a second line with a link), with
    any of ``secrets`` masked."""
    cause = getattr(error, "orig", None) or error
    text = " ".join(str(cause).split("\n", 1)[0].split()) or type(cause).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # not a URL: no password we could name
        return None


class OneLineGroup(click.Group):
    """A group whose errors are one line each: a usage error ends with the command's ``--help``
    hint, and an audit database or broker failing mid-command (an environment problem, not a
    bug) is named instead of a traceback. Genuine bugs still raise with their traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as error:
            hint = ""
            if error.ctx is not None:
                hint = f" (see '{error.ctx.command_path} --help')"
            click.echo(f"Error: {error.format_message()}{hint}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except OSError as error:
            if error.errno != errno.EPIPE:
                raise
            # A reader that went away (``| head``): stop quietly, as the Python docs advise
            # (signal, "Note on SIGPIPE"): what is left to flush goes nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as error:
            problem = _environment_problem(error)
            if problem is None:
                raise
            click.echo(f"Error: {problem}", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _environment_problem(error: Exception) -> str | None:
    """What a broker or database error that no command caught says, in one line."""
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import SQLAlchemyError

    from worker.settings import ImproperlyConfigured

    if isinstance(error, ImproperlyConfigured):
        # Raised by the Celery app's settings checks, also when importing worker.celery.
        return str(error)
    if isinstance(error, BrokerError):
        return f"the broker failed: {first_line(error)}; is it running (BMSREBOOT_BROKER_URL)?"
    if isinstance(error, SQLAlchemyError):
        return (
            f"the audit database failed: {type(error).__name__}: {first_line(error)}; "
            "is it reachable and upgraded (`bmsreboot db upgrade`)?"
        )
    return None


def ensure_data_dir(settings: Any) -> None:
    """Create the data dir when an embedded default (SQLite broker or audit database) lives
    in it: a command may run before any worker has created it."""
    if not (settings.embedded_broker or settings.embedded_database):
        return
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(
            f"cannot create the data dir {settings.data_dir} ({error.strerror}): "
            "set BMSREBOOT_DATA_DIR to a directory you can write"
        ) from None


@contextlib.contextmanager
def broker_errors(settings: Any) -> Iterator[None]:
    """A broker that cannot be reached (or, embedded, opened) is one line naming it."""
    from kombu.exceptions import OperationalError as BrokerError

    url = settings.effective_broker_url
    try:
        yield
    except (BrokerError, OSError) as error:
        reason = first_line(error, _password(url))
        if settings.embedded_broker:
            raise click.ClickException(
                f"cannot open the embedded broker {safe_url(url)} ({reason}): check that "
                f"BMSREBOOT_DATA_DIR ({settings.data_dir}) is a directory you can write"
            ) from None
        raise click.ClickException(
            f"cannot reach the broker at {safe_url(url)} ({reason}): is Redis running, and is "
            "BMSREBOOT_BROKER_URL right?"
        ) from None


@contextlib.contextmanager
def audit_database_errors(url: str | None = None) -> Iterator[None]:
    """An audit database that cannot be read is one line for the operator, never a traceback
    (every command that reads it)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        where = f" at {safe_url(url)}" if url else ""
        raise click.ClickException(
            f"cannot read the audit database{where} ({type(exc).__name__}: "
            f"{first_line(exc, _password(url) if url else None)}); "
            "is it reachable and upgraded (`bmsreboot db upgrade`)?"
        ) from None


@contextlib.contextmanager
def database_errors(url: str, option: str = "--url") -> Iterator[None]:
    """What ``bmsreboot db`` meets: a URL that is not one, a driver that is not installed, a
    database that does not exist or cannot be reached, a revision Alembic does not know."""
    from alembic.util import CommandError
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    secret = _password(url)
    where = safe_url(url)
    try:
        yield
    except NoSuchModuleError as error:
        raise click.ClickException(
            f"no driver for {where} ({first_line(error)}): use postgresql+psycopg://... or "
            f"sqlite:///PATH ({option})"
        ) from None
    except ArgumentError:
        raise click.ClickException(
            f"not a database URL: {where!r}: use postgresql+psycopg://USER:PASSWORD@HOST/DB "
            f"or sqlite:///PATH ({option})"
        ) from None
    except ModuleNotFoundError as error:
        raise click.ClickException(
            f"no driver for {where} (module {error.name} is not installed): use "
            f"postgresql+psycopg://... or sqlite:///PATH ({option})"
        ) from None
    except CommandError as error:
        raise click.ClickException(
            f"{first_line(error)}: `bmsreboot db current` shows where the database is and the "
            "newest revision"
        ) from None
    except SQLAlchemyError as error:
        reason = first_line(error, secret)
        advice = (
            "create it first (createdb), or check the URL"
            if "does not exist" in reason
            else "is the database server running, and is the URL right"
        )
        raise click.ClickException(
            f"cannot use the database at {where} ({reason}): {advice} ({option})"
        ) from None
    except OSError as error:
        raise click.ClickException(
            f"cannot open the database at {where} ({error.strerror}: {error.filename}): "
            f"check the path ({option})"
        ) from None


@contextlib.contextmanager
def port_errors(host: str, port: int) -> Iterator[None]:
    """A port that cannot be listened on is one line saying why and what to do."""
    import socket

    try:
        yield
    except socket.gaierror:
        raise click.ClickException(
            f"cannot listen on {host!r}: not a host name or address (--host)"
        ) from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            message = (
                f"port {port} is in use on {host}: stop what listens there, or choose another "
                "--port"
            )
        elif error.errno == errno.EACCES:
            message = f"port {port} on {host} needs privileges: choose a port above 1023 (--port)"
        elif error.errno == errno.EADDRNOTAVAIL:
            message = f"cannot listen on {host}: not an address of this machine (--host)"
        else:
            message = f"cannot listen on {host}:{port} ({error.strerror}): check --host and --port"
        raise click.ClickException(message) from None
