"""The migrations build exactly the models' schema, and come back down, on both engines."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import inspect

from worker.cli.db import db
from worker.db.session import (
    current_revision,
    downgrade_database,
    head_revision,
    make_engine,
    schema_diff,
    upgrade_database,
)

TABLES = {
    "reboot_requests",
    "batches",
    "server_results",
    "events",
    "api_budgets",
    "dead_letters",
    "schedule_ticks",
    "metric_counters",
    "webhook_deliveries",
}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_to_head_matches_the_models_and_downgrades_to_base(empty_db_url: str) -> None:
    # Given an empty database
    assert current_revision(empty_db_url) is None
    # When it is upgraded to head
    upgrade_database(empty_db_url)
    # Then it is at head and autogenerate sees no difference from the models
    assert current_revision(empty_db_url) == head_revision()
    assert _tables(empty_db_url) == TABLES
    assert schema_diff(empty_db_url) == []
    # And it downgrades back to an empty base, and up again
    downgrade_database(empty_db_url, "base")
    assert current_revision(empty_db_url) is None
    assert _tables(empty_db_url) == set()
    upgrade_database(empty_db_url)
    assert schema_diff(empty_db_url) == []


def test_db_check_fails_until_the_database_is_upgraded(empty_db_url: str) -> None:
    runner = CliRunner()
    before = runner.invoke(db, ["check", "--url", empty_db_url])
    assert before.exit_code == 1
    assert "add_table reboot_requests" in before.output
    upgraded = runner.invoke(db, ["upgrade", "--url", empty_db_url])
    assert upgraded.exit_code == 0
    assert upgraded.output.strip() == head_revision()
    after = runner.invoke(db, ["check", "--url", empty_db_url])
    assert after.exit_code == 0, after.output
    current = runner.invoke(db, ["current", "--url", empty_db_url])
    assert f"current: {head_revision()}" in current.output
    down = runner.invoke(db, ["downgrade", "base", "--yes", "--url", empty_db_url])
    assert (down.exit_code, down.output.strip()) == (0, "base")


def test_the_migrated_check_constraints_allow_exactly_the_states_of_the_models(
    empty_db_url: str,
) -> None:
    # Alembic's comparison does not look at CHECK constraints: the states are checked here.
    import re

    from worker.db.states import (
        BatchStatus,
        DeliveryStatus,
        DestinationKind,
        EventEntity,
        RequestStatus,
        ServerStatus,
    )

    upgrade_database(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        inspector = inspect(engine)
        expected = {
            ("reboot_requests", "ck_reboot_requests_request_status"): RequestStatus,
            ("reboot_requests", "ck_reboot_requests_stop_request_status"): RequestStatus,
            ("batches", "ck_batches_batch_status"): BatchStatus,
            ("server_results", "ck_server_results_server_status"): ServerStatus,
            ("events", "ck_events_event_entity"): EventEntity,
            ("webhook_deliveries", "ck_webhook_deliveries_delivery_status"): DeliveryStatus,
            ("webhook_deliveries", "ck_webhook_deliveries_destination_kind"): DestinationKind,
        }
        for (table, name), states in expected.items():
            (check,) = [c for c in inspector.get_check_constraints(table) if c["name"] == name]
            allowed = set(re.findall(r"'([a-z_]+)'", check["sqltext"]))
            assert allowed == {s.value for s in states}, (table, name)
    finally:
        engine.dispose()
