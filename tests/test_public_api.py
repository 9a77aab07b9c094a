"""The public names are a promise: adding one is a decision, removing one breaks users."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import wflo

# Every public package and module, and exactly what it exports: a change here is a decision
# (adding a name is a promise; removing one breaks users). ``wflo`` holds the names users type;
# ``wflo.ext`` the interface for integration, guard and tool authors.
PINNED: dict[str, set[str]] = {
    "wflo": {
        "Approval", "ApprovalRejected", "Budget", "BudgetExceededError", "LoopDetectedError", "LoopGuard", "Queue",
        "RetryPolicy", "RunFailedError", "RunHandle", "Sandbox", "UserError", "WfloError", "aapproval", "approval",
        "approvals", "budgets", "configure", "egress", "init", "policies", "resume", "scope", "step", "tool", "workflow", "wrap"
    },
    "wflo.approvals": {
        "Approval", "ApprovalGuard", "ApprovalRequest", "Approvals", "Decision", "Inbox", "action_hash",
        "aapproval", "action_text",
        "approval", "approval_id_for", "approval_records", "approvals", "inbox", "parse_duration",
        "wait_for_notifications"
    },
    "wflo.audit": {
        "BookFinding", "BookReport", "ChainReport", "CheckpointResult", "ExportProblem", "ExportReport", "PruneResult", "add_redactor", "build_report", "chain_hasher", "count_events",
        "export",
        "generate_key", "load_private_key", "load_public_key", "make_checkpoint", "merkle_root", "parse_when", "prune",
        "prune_candidates", "pruned_chains", "read_checkpoint", "render_html", "verify_all", "verify_book", "verify_chain",
        "verify_checkpoint", "verify_export", "verify_run", "write_checkpoint"
    },
    "wflo.auth": {
        "Access", "AccessDeniedError", "AccessError", "AuthenticationError", "ClaimsPolicy", "Credentials", "DeviceLogin",
        "DevicePoll", "DeviceRequest", "DeviceRequests", "DeviceStart", "GLOBAL",
        "Grant", "Identities", "Offboarded", "PERMISSIONS", "Principal", "ROLES", "ServerClient", "Session", "TokenInfo", "Tokens",
        "access", "check_principal", "check_scope", "covers", "credentials_path", "forget_credentials",
        "load_credentials", "os_user", "parse_duration", "principal_id", "role_allows", "save_credentials",
        "tenant_scope", "token_digest", "tokens"
    },
    "wflo.cli": {"cli", "main"},
    "wflo.compliance": {
        "CONTROLS", "FRAMEWORKS", "PackResult", "build_evidence", "build_pack", "check_retention", "due_period",
        "earliest_cutoff", "enforce_retention", "find_gaps", "run_schedule", "sections_for", "verify_pack",
        "wait_for_packs"
    },
    "wflo.config": {"Runtime", "Settings", "configure", "get_store", "runtime", "settings"},
    "wflo.cost": {
        "Budget", "BudgetGuard", "BudgetUsage", "Budgets", "Cost", "CostRequest", "DEFAULT_OUTPUT_CAP", "Ledger",
        "Limit", "PERIODS", "Price", "PriceBook", "Reservation", "RunSpend", "SpendLine", "Usage", "book_and_journal", "book_runs_since", "budget_alerted", "budget_periods",
        "budget_records", "budgets", "estimate_input_tokens", "estimate_text_tokens", "journal_run_spend", "ledger", "period_start", "prices",
        "run_cost", "run_spend", "run_spend_sql", "spend", "spend_rows", "sse_events", "top_runs",
        "usage_from_response", "usd_str"
    },
    "wflo.demo": {"run_demo"},
    "wflo.engine": {
        "BoundWorkflow", "Call", "Guard", "JournalEntry", "NOT_REPLAYED", "Outcome", "Queue", "RunContext", "RunHandle",
        "RunOptions", "Step", "StepOptions", "ToolOptions", "Worker", "WorkerInfo", "Workflow", "WorkflowOptions", "add_cancel_hook",
        "add_finish_op", "add_guard_factory", "add_resume_hook", "aguarded_call", "check_options", "current_run",
        "declared_queues",
        "finish_call", "get_workflow", "guarded_call", "module_for_file", "owner_is_dead_here", "process_owner",
        "registered_workers", "registered_workflows", "resume", "start_call", "step", "workflow"
    },
    "wflo.errors": {
        "AccessDeniedError", "AccessError", "ActionMismatchError", "ApprovalClosedError", "ApprovalError",
        "ApprovalForbiddenError", "ApprovalNotFoundError", "ApprovalRejected", "AtMostOnceError", "AuditError",
        "AuthenticationError", "BudgetError", "BudgetExceededError", "ChainBrokenError", "CircuitOpenError",
        "ConfigurationError", "EgressRefusedError", "GuardError", "LeaseLost", "LoopDetectedError",
        "NonDeterminismError", "OptionError", "RateLimitedError", "ResultTimeoutError", "RetentionError",
        "RunCancelled", "RunEndedError", "RunFailedError", "RunNotFoundError", "RunReleased", "RunStopped", "RunSuspended",
        "SandboxError", "SandboxSetupError", "SandboxUnavailableError", "SchemaVersionError", "SerializationError",
        "StepFailedError", "StoreCorruptError", "StoreError", "StoreNotFoundError", "StoreUnavailableError",
        "ToolDeniedError", "UnboundedRequestError", "UnknownPriceError", "UnknownWorkflowError", "UserError",
        "WfloError", "WfloInterrupt", "exit_code_for", "missing_extra"
    },
    "wflo.ext": {
        "BoundWorkflow", "Call", "Guard", "JournalEntry", "NOT_REPLAYED", "Outcome", "RunContext", "Step",
        "StepOptions", "Tool", "ToolOptions", "Workflow", "WorkflowOptions", "add_cancel_hook", "add_finish_op",
        "add_guard_factory", "add_resume_hook", "aguarded_call", "check_options", "current_run", "finish_call",
        "guarded_call", "start_call"
    },
    "wflo.guards": {
        "CircuitBreaker", "CircuitOpenError", "LoopGuard", "LoopGuardGuard", "LoopState", "Outcome", "Permit",
        "Policies", "PolicyGuard", "Rate", "RateLimitedError", "RateLimiter", "RetryPolicy", "Signature", "Timeout",
        "Transition", "digest", "is_retryable", "parse_duration", "parse_rate", "policies", "retry_after", "timeout"
    },
    "wflo.integrations": {"egress", "fallback", "install_http_interception", "wrap"},
    "wflo.mcp": {"Connection", "MCPTool", "ToolServer", "connect", "serve"},
    "wflo.observability": {
        "CONTENT_ENV", "SEMCONV_SCHEMA_URL", "SEMCONV_VERSION", "disable", "enable", "export_run", "flush",
        "is_enabled", "metrics_collector", "run_finished", "serve_metrics"
    },
    "wflo.sandbox": {
        "Egress", "Limits", "Sandbox", "SandboxBackend", "SandboxResult", "parse_size", "register_backend"
    },
    "wflo.server": {"FIRST_SIGNIN_PATH", "FirstSignIn", "PUBLIC", "RouteSpec", "SIGNED_IN", "create_app", "serve_in_thread"},
    "wflo.store": {
        "END_EVENTS", "Event", "FINAL_STATUSES", "GENESIS", "Head", "MIGRATIONS", "Migration", "NewEvent", "OrderedExecutor", "QueueRule", "RUN_STATUSES",
        "RowStream", "RunRecord", "SCHEMA_VERSION", "SYSTEM_CHAIN", "Store", "StoreOp", "TYPE_INDEXED", "apply_roles", "canonical_json",
        "event_hash", "iso", "json_string", "link_hash", "new_id", "now_iso", "open_store", "parse_iso", "role_statements"
    },
    "wflo.testing": {"LLMServer", "Recorded", "Reply", "ToolCall"},
    "wflo.tools": {
        "Capabilities", "Effects", "Grant", "Manifest", "PackagedTool", "Tool", "ToolLimits", "ToolPackage", "ToolRefused",
        "UntrustedTool", "catalog", "csv_stats", "files", "git", "grant", "grants", "http_get", "installed", "load",
        "memory", "python", "revoke", "sign_package", "sql_query", "tool", "trust", "trusted_keys", "untrust",
    },
}  # fmt: skip


def _public_packages() -> list[str]:
    """``wflo``, every public subpackage, and every public top-level module (``wflo.errors``)."""
    found = ["wflo"]
    for info in pkgutil.walk_packages(wflo.__path__, "wflo."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        if info.ispkg or info.name.count(".") == 1:
            found.append(info.name)
    return sorted(found)


def test_every_public_package_is_pinned() -> None:
    assert sorted(PINNED) == _public_packages()


@pytest.mark.parametrize("package", sorted(PINNED))
def test_all_is_pinned_exactly_sorted_and_resolves(package: str) -> None:
    mod = importlib.import_module(package)
    assert set(mod.__all__) == PINNED[package]
    assert len(mod.__all__) == len(PINNED[package]), "a name is listed twice"
    assert list(mod.__all__) == sorted(mod.__all__, key=str)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{package}.{name}"


def test_the_top_level_stays_small() -> None:
    # The design aims at about 20 names users type; the rest is one package away. An async
    # twin (``aapproval`` of ``approval``) is the same name to learn, so it does not count.
    twins = {n for n in wflo.__all__ if n.startswith("a") and n[1:] in wflo.__all__}
    assert len(set(wflo.__all__) - twins) <= 26


def test_removed_top_level_names_live_in_their_packages() -> None:
    import wflo.config
    import wflo.engine
    import wflo.errors

    assert wflo.errors.RunCancelled is wflo.errors.RunCancelled and issubclass(wflo.errors.OptionError, TypeError)
    assert wflo.config.settings is not None and wflo.engine.Worker and wflo.engine.Workflow
    assert not hasattr(wflo, "Worker") and not hasattr(wflo, "RunCancelled") and not hasattr(wflo, "settings")


def test_the_cli_uses_only_public_modules_of_other_packages() -> None:
    # The CLI is a client of the public API (and the store's public read queries).
    cli = Path(wflo.__file__).parent / "cli"
    private = []
    for path in sorted(cli.glob("*.py")):
        private += [f"{path.name}: {m}" for m in re.findall(r"from \.\.\w+\._\w+", path.read_text())]
    assert not private, private


def test_the_top_level_imports_no_private_module_of_a_subpackage() -> None:
    # wflo/__init__ re-exports from each package's public __init__, never from its _modules.
    source = Path(wflo.__file__).read_text()
    assert not re.search(r"from \.\w+\._", source), re.findall(r"from \.\w+\._\w+", source)


def test_errors_pickle_and_carry_codes() -> None:
    import pickle
    from decimal import Decimal

    err = wflo.BudgetExceededError(
        scope="tenant:a", limit=Decimal("1"), spent=Decimal("0.5"), reserved=Decimal("0.4"), requested=Decimal("0.2")
    )
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and back.scope == "tenant:a" and back.requested == Decimal("0.2")
    assert str(back) == str(err) and back.code == "budget_exceeded"
    assert issubclass(wflo.errors.RunCancelled, BaseException) and not issubclass(wflo.errors.RunCancelled, Exception)


def test_the_store_methods_the_domains_write_through_are_pinned() -> None:
    """The store's interface each domain's ``_tables.py`` uses (docs/architecture.md, "Where
    the SQL lives"): renaming one breaks every integration that keeps tables of its own."""
    import inspect

    from wflo.store import Store

    for name in (
        "ask_now", "execute", "fence", "now", "read", "read_one", "stream", "sync", "wake", "write", "write_batch",
        "write_rows",
    ):  # fmt: skip
        assert callable(getattr(Store, name, None)), name
    params = inspect.signature(Store.write_rows).parameters
    assert list(params) == ["self", "sql", "rows", "fence", "relaxed"]
    assert {params[p].kind for p in ("fence", "relaxed")} == {inspect.Parameter.KEYWORD_ONLY}


def test_the_store_methods_async_runs_write_through_are_pinned() -> None:
    """``off_loop`` (an operation on the store's threads, in a run's order) and ``loop_writer``
    (a run's append from the event loop, ``None`` where the store has none: SQLite)."""
    import inspect

    from wflo.store import Store

    assert list(inspect.signature(Store.loop_writer).parameters) == ["self", "key"]
    assert inspect.iscoroutinefunction(Store.off_loop)
