"""Approval policies built with nonsense are refused when built, with one line naming the fix;
``wflo.approval()`` takes its approvers as ``wflo.Approval`` does (sweep of the public API)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import wflo
from wflo import _config


@pytest.mark.parametrize(
    ("options", "says"),
    [
        # NaN passed "<= 0": a request with a NaN deadline was filed.
        ({"timeout": float("nan")}, r"timeout must be a positive, finite duration"),
        ({"timeout": float("inf")}, r"timeout must be a positive, finite duration \(None: no timeout\)"),
        ({"quorum": True}, r"quorum must be a positive integer, got True"),
        # Only one named person may decide: a quorum of 2 could never be reached.
        (
            {"approvers": ["user:alice"], "quorum": 2},
            r"quorum=2 needs 2 distinct approvers, but approvers names only 1 \(user:alice\)",
        ),
        ({"approvers": ["user:alice", "user:alice"], "quorum": 2}, r"names only 1 \(user:alice\)"),
        ({"message": 5}, r"message must be text, got 5"),
    ],
)
def test_nonsense_policies_are_refused_when_built(options: dict[str, Any], says: str) -> None:
    with pytest.raises(wflo.UserError, match=says) as info:
        wflo.Approval(**{"approvers": ["user:alice", "user:bob"], **options})
    assert "\n" not in str(info.value)


def test_a_quorum_a_role_can_meet_is_kept() -> None:
    assert wflo.Approval(approvers=["role:finance"], quorum=3).quorum == 3
    assert wflo.Approval(approvers=["user:alice", "role:finance"], quorum=2).quorum == 2
    assert wflo.Approval(quorum=2).quorum == 2  # anyone but the requester
    assert wflo.Approval(approvers=["user:a"], timeout=None).timeout_seconds is None


@pytest.fixture
def sqlite_configured(sqlite_url: str) -> Iterator[str]:
    _config.configure(database=sqlite_url, lease_seconds=5.0, poll_interval=0.05)
    yield sqlite_url
    _config.reset()


def test_approval_takes_one_approver_as_text(sqlite_configured: str) -> None:
    # approvers="user:alice" was split into characters: "approvers entries look like ...
    # got 'u'", failing the run.
    @wflo.workflow(name="misuse.approval_text")
    def flow() -> bool:
        return wflo.approval("Ship it?", approvers="user:alice").approved

    handle = flow.start()
    with pytest.raises(wflo.errors.RunSuspended):
        wflo.resume(handle.id, wait=False)
    assert handle.status() == "waiting"
    pending = wflo.approvals.list()
    assert [p.approvers for p in pending] == [["user:alice"]]
