"""The state machines as tables: complete, terminal sets derived, final status derivation."""

from __future__ import annotations

import pytest

from worker.db.states import (
    BATCH_TRANSITIONS,
    REQUEST_TRANSITIONS,
    SERVER_TRANSITIONS,
    TERMINAL_BATCH_STATES,
    TERMINAL_REQUEST_STATES,
    BatchStatus,
    IllegalTransition,
    RequestStatus,
    ServerStatus,
    derive_request_status,
)

B, R, S = BatchStatus, RequestStatus, ServerStatus


@pytest.mark.parametrize(
    ("table", "enum"),
    [(BATCH_TRANSITIONS, B), (REQUEST_TRANSITIONS, R), (SERVER_TRANSITIONS, S)],
)
def test_every_state_has_a_row_in_its_table(table: dict, enum: type) -> None:
    assert set(table) == set(enum)
    assert all(isinstance(targets, frozenset) for targets in table.values())


def test_terminal_states_are_where_the_pipelines_work_ends() -> None:
    assert {
        B.SUCCEEDED,
        B.FAILED,
        B.PARTIALLY_FAILED,
        B.UNKNOWN,
        B.REJECTED,
        B.CANCELLED,
        B.TIMED_OUT,
        B.SKIPPED,
    } == TERMINAL_BATCH_STATES
    assert {
        R.SUCCEEDED,
        R.PARTIALLY_FAILED,
        R.FAILED,
        R.HALTED,
        R.CANCELLED,
        R.REJECTED,
    } == TERMINAL_REQUEST_STATES
    # Nothing leaves these at all; the others only by an operator's decision on unknowns
    for states, table in ((TERMINAL_BATCH_STATES, BATCH_TRANSITIONS),):
        closed = {s for s in states if not table[s]}
        assert closed == {
            B.SUCCEEDED,
            B.FAILED,
            B.PARTIALLY_FAILED,
            B.REJECTED,
            B.CANCELLED,
            B.SKIPPED,
        }
    assert REQUEST_TRANSITIONS[R.SUCCEEDED] == frozenset()
    assert REQUEST_TRANSITIONS[R.REJECTED] == frozenset()


def test_an_unknown_batch_goes_on_only_by_an_operators_decision() -> None:
    # What the operator found, or resubmit (back to pending, through the release step)
    assert BATCH_TRANSITIONS[B.UNKNOWN] == {B.SUCCEEDED, B.FAILED, B.PENDING}
    assert BATCH_TRANSITIONS[B.TIMED_OUT] == {B.SUCCEEDED, B.FAILED, B.PENDING}
    assert SERVER_TRANSITIONS[S.UNKNOWN] == {S.SUCCEEDED, S.FAILED, S.PENDING}
    # The pipeline itself never sends a submitted batch back
    assert B.PENDING not in BATCH_TRANSITIONS[B.SUBMITTED]


def test_statuses_are_stored_by_lowercase_value() -> None:
    assert B.TIMED_OUT == "timed_out"
    assert R.PARTIALLY_FAILED.value == "partially_failed"


@pytest.mark.parametrize(
    ("counts", "batches", "expected"),
    [
        ({S.SUCCEEDED: 3}, [B.SUCCEEDED], R.SUCCEEDED),
        ({S.FAILED: 3}, [B.FAILED], R.FAILED),
        ({S.UNKNOWN: 2}, [B.UNKNOWN], R.FAILED),
        ({S.SUCCEEDED: 2, S.FAILED: 1}, [B.PARTIALLY_FAILED], R.PARTIALLY_FAILED),
        ({S.SUCCEEDED: 2, S.UNKNOWN: 1}, [B.SUCCEEDED, B.TIMED_OUT], R.PARTIALLY_FAILED),
        ({S.SUCCEEDED: 2, S.CANCELLED: 1}, [B.SUCCEEDED, B.CANCELLED], R.PARTIALLY_FAILED),
        ({S.SUCCEEDED: 2, S.PENDING: 1}, [B.SUCCEEDED, B.CANCELLED], R.PARTIALLY_FAILED),
        ({S.CANCELLED: 4}, [B.CANCELLED, B.CANCELLED], R.CANCELLED),
        ({S.FAILED: 1, S.CANCELLED: 3}, [B.REJECTED, B.CANCELLED], R.FAILED),
        ({}, [B.CANCELLED], R.CANCELLED),
        ({}, [], R.FAILED),
    ],
)
def test_derive_request_status(counts: dict, batches: list, expected: RequestStatus) -> None:
    assert derive_request_status(batches, counts) is expected


def test_illegal_transition_says_what_and_where() -> None:
    error = IllegalTransition("batch", "b-1", B.SUCCEEDED, B.PENDING)
    assert (error.entity, error.id, error.current, error.target) == (
        "batch",
        "b-1",
        B.SUCCEEDED,
        B.PENDING,
    )
    assert str(error) == "batch b-1: cannot go from succeeded to pending"
