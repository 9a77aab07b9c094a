"""Tool grants: who may use a tool, under which approval, how often and for how much.

A grant names a tool and a principal: ``workflow:NAME`` (runs of that workflow),
``tenant:NAME`` (runs of that tenant, or calls inside ``wflo.scope(tenant=...)``) or
``agent:NAME`` (calls inside ``wflo.scope(agent=...)``). Grants live in ``tool_grants``; each
change is an event on the system chain (``tool.granted``/``tool.revoked``) with who made it.

When a tool is called in a run (checked before the call, in ``Tool._call``):

- a packaged tool always needs a grant; a built-in or ``@wflo.tool`` tool needs one only with
  the ``require_tool_grants`` setting (so existing code keeps working until you opt in);
- without one the call is refused (``ToolRefused``) and the refusal is journaled as the
  call's result;
- a destructive tool waits for approval unless its grant says ``approval="none"``; a grant
  can also require approval (``"required"``) or name approvers (``"role:ops,user:ana"``);
- ``max_calls`` caps the calls of the tool in one run; ``budget_usd`` caps what its priced
  calls (``cost_usd`` in the manifest) may cost in one run.

Since a grant names a tool, two tools must not share a name: ``wflo.mcp.connect`` refuses a
server tool named like a built-in, a declared packaged tool or another open server's tool, and
``load`` refuses a packaged tool named like a built-in (either would get the other's grants).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .._config import get_store, settings
from .._errors import UserError
from ..approvals import Approval
from ..cost._ledger import to_usd, usd_str
from ..store import NewEvent
from ._errors import ToolRefused
from ._manifest import NAME

if TYPE_CHECKING:
    from ..engine import Call
    from ..store import Store
    from ._tool import Tool

KINDS = ("workflow", "tenant", "agent")
_PRINCIPAL = re.compile(r"^(workflow|tenant|agent):[^\s:]{1,200}$")
_APPROVER = re.compile(r"^(role|user):[^\s,]+$")


@dataclass(frozen=True)
class Grant:
    """One tool granted to one principal."""

    tool: str
    principal: str
    approval: str | None
    """``None`` (the tool's default: destructive tools ask), ``"none"``, ``"required"`` or
    approvers (``"role:ops,user:ana"``)."""
    max_calls: int | None
    budget_usd: Decimal | None
    granted_by: str
    granted_at: str

    def to_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "principal": self.principal, "approval": self.approval,
                "max_calls": self.max_calls, "budget_usd": None if self.budget_usd is None else usd_str(self.budget_usd),
                "granted_by": self.granted_by, "granted_at": self.granted_at}  # fmt: skip


def _check_approval(approval: str | None) -> str | None:
    if approval is None or approval in ("none", "required"):
        return approval
    parts = [p.strip() for p in approval.split(",") if p.strip()]
    if not parts or not all(_APPROVER.match(p) for p in parts):
        raise UserError(f"approval must be 'none', 'required' or approvers like 'role:ops,user:ana', got {approval!r}")
    return ",".join(parts)


def _local_change_allowed(permission: str) -> None:
    if settings().require_auth:
        from ..auth import access

        access().require_local(permission)


def grant(
    tool: str,
    to: str,
    *,
    approval: str | None = None,
    max_calls: int | None = None,
    budget_usd: Any = None,
    store: Store | None = None,
    by: str | None = None,
    via: str = "local",
) -> Grant:
    """Grant ``tool`` to ``to`` (``workflow:NAME``, ``tenant:NAME`` or ``agent:NAME``),
    replacing an earlier grant of the same pair; recorded on the system chain."""
    _check_pair(tool, to)
    approval = _check_approval(approval)
    if max_calls is not None and (isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1):
        raise UserError(f"max_calls must be a positive integer, got {max_calls!r}")
    budget = None if budget_usd is None else to_usd(budget_usd, "budget")
    if via == "local":
        _local_change_allowed("tools:write")
    st = store or get_store()
    from ..store import now_iso

    g = Grant(tool, to, approval, max_calls, budget, by or settings().principal, now_iso())

    def op(cur: Any) -> None:
        st.execute(cur, "DELETE FROM tool_grants WHERE tool = ? AND principal = ?", (tool, to))
        st.execute(
            cur,
            "INSERT INTO tool_grants (tool, principal, approval, max_calls, budget_usd, granted_by, granted_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (tool, to, approval, max_calls, None if budget is None else usd_str(budget), g.granted_by, g.granted_at),
        )

    st.append_system([NewEvent("tool.granted", {**g.to_dict(), "by": g.granted_by, "via": via})], ops=[op])
    return g


def _check_pair(tool: Any, to: Any) -> None:
    if not isinstance(tool, str) or not NAME.match(tool):
        raise UserError(f"not a tool name: {tool!r}")
    if not isinstance(to, str) or not _PRINCIPAL.match(to):
        raise UserError(f"--to must be workflow:NAME, tenant:NAME or agent:NAME, got {to!r}")


def revoke(tool: str, to: str, *, store: Store | None = None, by: str | None = None, via: str = "local") -> bool:
    """Remove the grant of ``tool`` to ``to``; returns whether there was one (recorded either way)."""
    _check_pair(tool, to)
    if via == "local":
        _local_change_allowed("tools:write")
    st = store or get_store()
    existed = any(g.principal == to for g in grants(tool, store=st))

    def op(cur: Any) -> None:
        st.execute(cur, "DELETE FROM tool_grants WHERE tool = ? AND principal = ?", (tool, to))

    st.append_system(
        [NewEvent("tool.revoked", {"tool": tool, "principal": to, "existed": existed,
                                   "by": by or settings().principal, "via": via})],
        ops=[op],
    )  # fmt: skip
    return existed


def grants(tool: str | None = None, *, store: Store | None = None) -> list[Grant]:
    """The grants (of one tool, or all), ordered by tool and principal."""
    if tool is not None and (not isinstance(tool, str) or not NAME.match(tool)):
        raise UserError(f"not a tool name: {tool!r}")
    st = store or get_store()
    sql = "SELECT tool, principal, approval, max_calls, budget_usd, granted_by, granted_at FROM tool_grants"
    params: list[Any] = []
    if tool is not None:
        sql += " WHERE tool = ?"
        params.append(tool)
    rows = st.read(sql + " ORDER BY tool, principal", params)
    return [Grant(r[0], r[1], r[2], None if r[3] is None else int(r[3]), None if r[4] is None else Decimal(r[4]),
                  r[5], r[6]) for r in rows]  # fmt: skip


def principals_of(ctx: Any) -> list[str]:
    """Who the current call acts for: its workflow, tenant and agent."""
    from .._scope import current_scope

    names = [f"workflow:{ctx.workflow}"]
    scope = current_scope()
    tenant = scope.get("tenant") or getattr(ctx.record, "tenant", None)
    if tenant:
        names.append(f"tenant:{tenant}")
    if scope.get("agent"):
        names.append(f"agent:{scope['agent']}")
    return names


def _policy(text: str | None, tool: Tool[..., Any]) -> Approval | None:
    if text == "none":
        return None
    if text == "required":
        return tool.approval or Approval()
    if text:
        return Approval(approvers=text.split(","))
    if tool.effects.destructive and tool.approval is None and not tool.approval_waived:
        return Approval()
    return tool.approval


def apply_grant(tool: Tool[..., Any], call: Call) -> None:
    """Decide, before ``call`` runs, whether the run may use ``tool`` and under which approval.

    Sets ``call.meta["grant_refused"]`` (a ``ToolRefused`` the call then raises, journaled)
    or the grant's approval policy, and records the grant used on the call's event."""
    ctx = call.run
    required = getattr(tool, "packaged", False) or settings().require_tool_grants
    mine = principals_of(ctx)
    # A connected MCP server's tool may have a name no grant can hold ("fs.write", say): it has
    # no grant (asking ``grants()`` for it raised UserError and failed the run at every call).
    grantable = bool(NAME.match(tool.name))
    found = [g for g in grants(tool.name, store=ctx.store) if g.principal in mine] if grantable else []
    if not found:
        if required:
            fix = (f"grant it: wflo tools grant {tool.name} --to {mine[0]}" if grantable
                   else "no grant can name it: a grant's tool is a letter, then at most 63 letters, digits, '_' or '-'")  # fmt: skip
            call.meta["grant_refused"] = ToolRefused(
                tool=tool.name, reason=f"tool {tool.name!r} is not granted to {' or '.join(mine)} ({fix})"
            )
            call.event["grant"] = None
            return
        policy = _policy(None, tool)
        if policy is not None:
            call.meta["approval"] = policy
        return
    # The workflow's grant, then the tenant's, then the agent's (``grants()`` sorts by
    # principal, which put agent: first: an agent's grant overrode its workflow's caps).
    g = min(found, key=lambda f: mine.index(f.principal))
    call.event["grant"] = g.principal
    counts: dict[str, int] = ctx.state.setdefault("tool_grant_calls", {})
    n = counts.get(tool.name, 0) + 1
    counts[tool.name] = n
    if g.max_calls is not None and n > g.max_calls:
        call.meta["grant_refused"] = ToolRefused(
            tool=tool.name, reason=f"the grant to {g.principal} allows {g.max_calls} call(s) of {tool.name} per run"
        )
        return
    cost = tool.capabilities.cost_usd
    if g.budget_usd is not None and cost is not None and cost * n > g.budget_usd:
        call.meta["grant_refused"] = ToolRefused(
            tool=tool.name,
            reason=f"the grant to {g.principal} allows ${usd_str(g.budget_usd)} of {tool.name} per run "
            f"(${usd_str(cost)} a call)",
        )
        return
    if cost is not None:
        call.event["tool_cost_usd"] = usd_str(cost)
    policy = _policy(g.approval, tool)
    if policy is None:
        call.meta.pop("approval", None)
    else:
        call.meta["approval"] = policy
