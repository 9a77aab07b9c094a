"""PostgreSQL roles that make the database itself enforce the audit trail.

Three roles, so that the credentials workers hold cannot rewrite history:

- the **owner** (migrator) owns the schema's tables and runs ``wflo db migrate``; its
  credentials are used for migrations only. Like a superuser, it could disable the
  append-only trigger; a signed checkpoint still catches what it rewrites or deletes.
- the **application** role (workers, server, scripts) reads and writes runs, budgets and
  approvals, and may only ``INSERT`` into ``events``: no ``UPDATE``, ``DELETE``,
  ``TRUNCATE``, no trigger changes (it owns nothing), and no way to the prune function.
- the **auditor** reads everything, appends audit records (checkpoints, prunes) to the
  system chain, and is the only role that may call ``wflo_prune_chain`` (a ``SECURITY
  DEFINER`` function that deletes the events of one finished run whose head matches).

``role_statements`` gives the exact SQL (docs/deployment.md prints it for the default
names); ``apply_roles`` runs it (``wflo db roles``).
"""

from __future__ import annotations

import re
from typing import Any

from .._errors import ConfigurationError, UserError
from ._base import Store

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Tables of the application that it must be able to change (all of them except events,
# which it may only append to, and wflo_meta, which only migrations change).
_APP_APPEND_ONLY = ("events",)
_APP_READ_ONLY = ("wflo_meta",)


def _ident(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ConfigurationError(f"{what} role name {name!r} must be lower-case letters, digits and _")
    return name


def role_statements(*, schema: str, owner: str, app: str, auditor: str, create: bool = True) -> list[str]:
    """The SQL that creates (with ``create``) and grants the three roles on ``schema``.

    Run it as a superuser (or a role with ``CREATEROLE`` that can grant on the owner's
    tables) after ``wflo db migrate`` has run as ``owner``. Idempotent.
    """
    schema, owner = _ident(schema, "schema"), _ident(owner, "owner")
    app, auditor = _ident(app, "application"), _ident(auditor, "auditor")
    if len({owner, app, auditor}) != 3:
        raise ConfigurationError("the owner, application and auditor roles must be three different roles")
    out: list[str] = []
    if create:
        for role in (app, auditor):
            out.append(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
                f"THEN CREATE ROLE {role} LOGIN; END IF; END $$"
            )
    out += [
        # Neither role may create objects in the schema or act as the owner.
        f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {schema} TO {app}, {auditor}",
        # The application: full use of the projections, append-only on the journal.
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {app}",
        f"REVOKE UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES ON {schema}.events FROM {app}",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {schema}.wflo_meta FROM {app}",
        f"REVOKE DELETE, TRUNCATE ON {schema}.runs FROM {app}",
        # Tables later migrations (and integrations, created by the owner) add.
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {auditor}",
        # The auditor: reads everything, appends audit records, prunes through the function.
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {auditor}",
        f"GRANT INSERT ON {schema}.events TO {auditor}",
        f"GRANT INSERT, UPDATE ON {schema}.chain_heads TO {auditor}",
        f"REVOKE ALL ON FUNCTION {schema}.wflo_prune_chain(text, bigint, text) FROM PUBLIC, {app}",
        f"GRANT EXECUTE ON FUNCTION {schema}.wflo_prune_chain(text, bigint, text) TO {auditor}",
    ]
    return out


def apply_roles(store: Store, *, owner: str, app: str, auditor: str, create: bool = True) -> list[str]:
    """Create and grant the roles in ``store``'s schema (PostgreSQL only); return the SQL run."""
    if store.dialect != "postgresql":
        raise UserError(
            "database roles exist on PostgreSQL only; on SQLite whoever can write the file can "
            "rewrite it (see docs/deployment.md: what a signed checkpoint still catches)"
        )
    schema_row = store.read("SELECT current_schema()")
    schema = str(schema_row[0][0]) if schema_row and schema_row[0][0] else "public"
    statements = role_statements(schema=schema, owner=owner, app=app, auditor=auditor, create=create)

    def run(cur: Any) -> None:
        for sql in statements:
            cur.execute(sql)

    store.write(run)
    return statements
