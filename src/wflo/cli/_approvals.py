"""``wflo approvals …``, ``wflo approve`` and ``wflo reject``."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape

from .. import config
from ..approvals import ApprovalRequest, action_text, approvals, inbox
from ..auth import ServerClient, load_credentials
from ..errors import ApprovalClosedError, UserError
from ._app import Table, cli, console, dump_json, handle_errors

_STATUSES = ["pending", "approved", "rejected", "expired", "superseded", "cancelled", "all"]


def _as_json(r: ApprovalRequest) -> dict[str, Any]:
    return {
        "id": r.id, "run_id": r.run_id, "tool": r.tool, "message": r.message, "action": r.action,
        "action_hash": r.action_hash, "status": r.status, "approvers": r.approvers, "quorum": r.quorum,
        "requested_by": r.requested_by, "decided_by": r.decided_by, "reason": r.reason, "via": r.via,
        "created_at": r.created_at, "decided_at": r.decided_at, "timeout_at": r.timeout_at,
        "decision_action": r.decision_action, "decision_hash": r.decision_hash,
        "decided_action": r.decided_action, "supersedes": r.supersedes,
    }  # fmt: skip


def _shown(action: dict[str, Any], message: str) -> str:
    return f"{message} | action {json.dumps(action, sort_keys=True)}"


def _edits(args_json: str | None) -> dict[str, Any] | None:
    if args_json is None:
        return None
    try:
        edited = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise UserError(f"--args is not valid JSON: {exc.msg}") from None
    if not isinstance(edited, dict):
        raise UserError("--args must be a JSON object of argument names to values")
    return edited


def _changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    old, new = before.get("kwargs", {}), after.get("kwargs", {})
    return ", ".join(f"{k} {old.get(k)!r} → {v!r}" for k, v in new.items() if k not in old or old[k] != v)


@cli.group("approvals")
def approvals_group() -> None:
    """The approval inbox: requests waiting for a human decision."""


@approvals_group.command("list")
@click.option("--mine", is_flag=True, help="Only requests you (WFLO_PRINCIPAL) may decide.")
@click.option(
    "--status",
    type=click.Choice(_STATUSES),
    default="pending",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def approvals_list(mine: bool, status: str, as_json: bool) -> None:
    """List approval requests (pending by default)."""
    config.get_store(create=False)  # only reads: a store that is not there is named, not created
    found = approvals.list(status=None if status == "all" else status, mine=mine)
    if as_json:
        dump_json([_as_json(r) for r in found])
        return
    if not found:
        console.print(f"no {'' if status == 'all' else status + ' '}approval requests")
        return
    table = Table(box=None, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=36)
    for col in ("status", "requested", "approvers", "action"):
        table.add_column(col)
    for r in found:
        # The action that runs if approved: an approver's edit, not the request, once decided.
        text = action_text(r.decided_action, 80) + (" (edited)" if r.decision_action else "")
        table.add_row(r.id, r.status, r.created_at[:19].replace("T", " "), ", ".join(r.approvers) or "anyone", text)
    console.print(table)


@approvals_group.command("show")
@click.argument("approval_id")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def approvals_show(approval_id: str, as_json: bool) -> None:
    """One request: the exact action, who may decide, votes so far."""
    config.get_store(create=False)  # only reads: a store that is not there is named, not created
    r = approvals.get(approval_id)
    if as_json:
        data = _as_json(r)
        data["votes"] = inbox().votes(r.id)
        dump_json(data)
        return
    console.print(f"[bold]approval[/] {escape(r.id)}  {r.status}")
    console.print(f"run        {r.run_id}", markup=False)
    console.print(f"message    {r.message}", markup=False, soft_wrap=True)
    console.print(f"action     {action_text(r.action)}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"hash       {r.action_hash}")
    if r.decision_action:
        console.print(
            f"approved   {action_text(r.decision_action)}  (edited by the approver)", markup=False, soft_wrap=True
        )
        console.print(f"its hash   {r.decision_hash}")
    if r.supersedes:
        prev = r.supersedes
        console.print(
            f"replaces   {prev['id']} ({prev['status']}) for {action_text(prev['action'])}: the action changed",
            markup=False,
            soft_wrap=True,
        )
    console.print(
        f"approvers  {', '.join(r.approvers) or 'anyone but the requester'} (quorum {r.quorum})", markup=False
    )
    console.print(
        f"requested  {r.created_at} by {r.requested_by}"
        + (f"; times out {r.timeout_at} → {r.on_timeout}" if r.timeout_at else ""),
        markup=False,
    )
    if r.decided_by:
        console.print(
            f"decided    {r.status} by {r.decided_by} via {r.via} at {r.decided_at}"
            + (f": {r.reason}" if r.reason else ""),
            markup=False,
            soft_wrap=True,
        )


def _via_server(
    decision: str, approval_id: str, reason: str | None, edits: dict[str, Any] | None, self_local: bool
) -> bool:
    """Decide through the server when the CLI is signed in (``wflo login``): the decision then
    carries the authenticated identity (``via: api``). False when not signed in."""
    creds = load_credentials()
    if creds is None:
        return False
    if self_local:
        raise UserError("--as-self-local is a local-mode convenience; you are signed in to a server (wflo logout)")
    client = ServerClient(creds)
    r = client.call("GET", f"/api/v1/approvals/{approval_id}")
    console.print(f"{decision} {r['id']} on {creds.server}: {action_text(r['action'])}", markup=False, soft_wrap=True)
    body = {"decision": decision, "reason": reason, "action_hash": r["action_hash"], "args": edits}
    done = client.call("POST", f"/api/v1/approvals/{r['id']}/decide", body)
    console.print(f"approval {done['id']}: {done['status']} (decided as {creds.server}'s signed-in principal)")
    return True


@cli.command("approve")
@click.argument("approval_id")
@click.option("--reason", help="Why (recorded).")
@click.option("--args", "args_json", metavar="JSON", help="Approve with these arguments changed (a JSON object).")
@click.option(
    "--as-self-local",
    "self_local",
    is_flag=True,
    help="Decide your own request alone (single-user local mode, recorded as a self-approval; "
    "refused when WFLO_REQUIRE_AUTH is set).",
)
@handle_errors
def approve_cmd(approval_id: str, reason: str | None, args_json: str | None, self_local: bool) -> None:
    """Approve a request as WFLO_PRINCIPAL, or as you through the server after `wflo login`
    (bound to the exact action shown)."""
    if _via_server("approve", approval_id, reason, _edits(args_json), self_local):
        return
    # Validate the edit and show the action that will run *before* deciding.
    r, action = inbox().preview(approval_id, _edits(args_json))
    if r.status != "pending":  # before "approving …", which read as if it had been
        raise ApprovalClosedError(approval_id=r.id, status=r.status)
    console.print(f"approving {r.id}: {action_text(action)}", markup=False, highlight=False, soft_wrap=True)
    if r.action != action:
        console.print(f"  edited: {_changes(r.action, action)}", markup=False, highlight=False, soft_wrap=True)
    done = approvals.decide(
        r.id, "approve", reason=reason, args=_edits(args_json), action_hash=r.action_hash, via="cli",
        shown=_shown(action, r.message), self_local=self_local,
    )  # fmt: skip
    console.print(
        f"approval {done.id}: {done.status}"
        + (" (waiting for more approvers)" if done.status == "pending" else "")
        + (" as a local self-approval" if self_local else "")
    )


@cli.command("reject")
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why (returned to the agent).")
@click.option("--as-self-local", "self_local", is_flag=True, help="Decide your own request alone (see `wflo approve`).")
@handle_errors
def reject_cmd(approval_id: str, reason: str, self_local: bool) -> None:
    """Reject a request as WFLO_PRINCIPAL (or through the server after `wflo login`), with a reason
    the agent receives."""
    if _via_server("reject", approval_id, reason, None, self_local):
        return
    r = approvals.get(approval_id)
    done = approvals.decide(
        r.id, "reject", reason=reason, action_hash=r.action_hash, via="cli", shown=_shown(r.action, r.message),
        self_local=self_local,
    )  # fmt: skip
    console.print(f"approval {done.id}: {done.status}")


@cli.command("grant")
@click.argument("principal")
@click.argument("role")
@click.option(
    "--scope", default="*", show_default=True, help="Where: '*', 'tenant:NAME' or 'tenant:NAME/project:NAME'."
)
@handle_errors
def grant_cmd(principal: str, role: str, scope: str) -> None:
    """Give a principal a role: `wflo grant user:alice finance` (needs admin; recorded on the audit chain).

    After `wflo login` the grant goes through the server, as you."""
    creds = load_credentials()
    if creds is not None:
        body = {"principal": principal, "role": role, "scope": scope}
        g = ServerClient(creds).call("POST", "/api/v1/grants", body)
        console.print(f"{g['principal']}: {g['role']} on {g['scope']} (granted through {creds.server})", markup=False)
        return
    roles = approvals.grant(principal, role, scope=scope)
    console.print(f"{principal}: roles {', '.join(sorted(roles))}", markup=False)
