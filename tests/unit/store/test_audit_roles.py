"""Issue 14 finding 2 on PostgreSQL: the database, not wflo's code, keeps the journal append-only.

Three roles as docs/deployment.md sets them up (``wflo db roles``): the owner migrates, the
application role runs workers, the auditor prunes. The application role tries every way
round the protection it used to have: ``SET LOCAL wflo.prune``, DELETE, UPDATE, TRUNCATE,
disabling or dropping the trigger, calling the prune function, deleting the ``runs`` row.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from wflo.store import Head, NewEvent, open_store
from wflo.store._roles import apply_roles

PG_URL = os.environ.get("WFLO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Deployment:
    schema: str
    owner: str
    app: str
    auditor: str

    def url(self, role: str) -> str:
        base = PG_URL.replace("postgres@", f"{role}@", 1)
        return f"{base}?options=-csearch_path%3D{self.schema}"


@pytest.fixture
def deployment(pg_url: str) -> Iterator[Deployment]:
    """Roles and a schema of this test's own (``pg_url`` only checks that PostgreSQL is up)."""
    yield from _deploy(via_cli=False)


def _deploy(*, via_cli: bool) -> Iterator[Deployment]:
    import psycopg

    tag = uuid.uuid4().hex[:10]
    dep = Deployment(f"r_{tag}", f"wflo_own_{tag}", f"wflo_app_{tag}", f"wflo_aud_{tag}")
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {dep.owner} LOGIN")
        conn.execute(f"CREATE SCHEMA {dep.schema} AUTHORIZATION {dep.owner}")
    try:
        with open_store(dep.url(dep.owner)) as owner_store:  # `wflo db migrate` as the owner
            owner_store.migrate()
        admin_url = f"{PG_URL}?options=-csearch_path%3D{dep.schema}"  # a superuser
        if via_cli:
            env = {"WFLO_DATABASE_URL": admin_url, "PYTHONPATH": os.pathsep.join(sys.path)}
            proc = subprocess.run([sys.executable, "-m", "wflo.cli", "db", "roles", "--app", dep.app,
                                   "--auditor", dep.auditor], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
            assert proc.returncode == 0 and f"tables owned by {dep.owner}" in " ".join(proc.stdout.split()), proc.stderr
        else:
            with open_store(admin_url) as admin:
                apply_roles(admin, owner=dep.owner, app=dep.app, auditor=dep.auditor)
        yield dep
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {dep.schema} CASCADE")
            for role in (dep.app, dep.auditor, dep.owner):
                if _exists(conn, role):
                    conn.execute(f"DROP OWNED BY {role} CASCADE")
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def _exists(conn: Any, role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _finished_run(url: str, run_id: str) -> Head:
    with open_store(url) as store:
        run, _ = store.create_run(run_id=run_id, workflow="w", input={}, owner="w1", lease_seconds=30)
        head = store.append(run_id, Head(run.last_seq, run.last_hash), [NewEvent("call.completed", {"call": "1"})],
                            owner="w1")  # fmt: skip
        return store.append(run_id, head, [NewEvent("run.completed", {})], owner="w1", status="succeeded",
                            output=1, finish=True)  # fmt: skip


ATTACKS = {
    "set local wflo.prune then delete": ["SET LOCAL wflo.prune = 'on'", "DELETE FROM events WHERE chain = 'r1'"],
    "update an event": ["UPDATE events SET data = '{}' WHERE chain = 'r1'"],
    "truncate": ["TRUNCATE events"],
    "disable the trigger": ["ALTER TABLE events DISABLE TRIGGER wflo_events_append_only"],
    "drop the trigger": ["DROP TRIGGER wflo_events_append_only ON events"],
    "replace the trigger function": [
        "CREATE OR REPLACE FUNCTION wflo_events_append_only() RETURNS trigger AS $$ BEGIN RETURN OLD; END $$ "
        "LANGUAGE plpgsql"
    ],
    "call the prune function": ["SELECT wflo_prune_chain('r1', 3, 'x')"],
    "delete the run row": ["DELETE FROM runs WHERE id = 'r1'"],
    "replica mode": ["SET session_replication_role = replica", "DELETE FROM events WHERE chain = 'r1'"],
    "become the owner": ["SET ROLE {owner}", "DELETE FROM events WHERE chain = 'r1'"],
}


@pytest.mark.postgres
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_the_application_role_cannot_rewrite_or_delete_events(deployment: Deployment, attack: str) -> None:
    import psycopg

    head = _finished_run(deployment.url(deployment.app), "r1")
    with psycopg.connect(deployment.url(deployment.app)) as conn:  # one transaction, as an attacker would
        with pytest.raises(psycopg.Error):
            for sql in ATTACKS[attack]:
                conn.execute(sql.replace("{owner}", deployment.owner))
        conn.rollback()
    with open_store(deployment.url(deployment.auditor)) as store:
        events = store.events("r1")
        assert [e.seq for e in events] == [1, 2, 3, 4] and events[-1].hash == head.hash
        assert store.get_run("r1").last_hash == head.hash


@pytest.mark.postgres
def test_a_delete_grant_given_by_mistake_still_does_not_pass_the_trigger(deployment: Deployment) -> None:
    """Defence in depth: the trigger itself refuses a non-owner's DELETE, wflo.prune or not."""
    import psycopg

    _finished_run(deployment.url(deployment.app), "r1")
    with psycopg.connect(f"{PG_URL}?options=-csearch_path%3D{deployment.schema}", autocommit=True) as su:
        su.execute(f"GRANT DELETE, UPDATE ON events TO {deployment.app}")
    with psycopg.connect(deployment.url(deployment.app)) as conn:
        conn.execute("SET LOCAL wflo.prune = 'on'")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM events WHERE chain = 'r1'")


@pytest.mark.postgres
def test_only_the_auditor_prunes_and_only_finished_runs(deployment: Deployment, tmp_path: Any) -> None:
    from wflo._errors import AuditError
    from wflo.audit import generate_key, prune, verify_all
    from wflo.audit._checkpoint import load_private_key, load_public_key

    (tmp_path / "pub.pem").write_text(generate_key(tmp_path / "key.pem"))
    key = load_private_key(tmp_path / "key.pem")
    _finished_run(deployment.url(deployment.app), "done")
    with open_store(deployment.url(deployment.app)) as app:
        app.create_run(run_id="live", workflow="w", input={}, owner="w1")
        with pytest.raises(AuditError, match="auditor role"):
            prune(app, "2999-01-01T00:00:00.000000Z", by="user:app", private_key=key, retention_override="test runs")
        assert len(app.events("done")) == 4
    with open_store(deployment.url(deployment.auditor)) as auditor:
        result = prune(
            auditor, "2999-01-01T00:00:00.000000Z", by="user:auditor", private_key=key, retention_override="test runs"
        )
        assert [c for c, _, _ in result.pruned] == ["done"]  # the live run is not a candidate
        assert auditor.events("done") == [] and len(auditor.events("live")) == 2
        reports = {r.chain: r for r in verify_all(auditor, trusted=load_public_key(tmp_path / "pub.pem"))}
        assert reports["done"].ok and reports["done"].pruned
        # The function itself refuses a run that is not finished, whatever the caller claims.
        live = auditor.get_run("live")
        import psycopg

        with (
            psycopg.connect(deployment.url(deployment.auditor)) as conn,
            pytest.raises(psycopg.Error, match="not finished"),
        ):
            conn.execute("SELECT wflo_prune_chain(%s, %s, %s)", ("live", live.last_seq, live.last_hash))


@pytest.mark.postgres
def test_wflo_db_roles_sets_the_roles_up(pg_url: str) -> None:
    import psycopg

    for dep in _deploy(via_cli=True):
        _finished_run(dep.url(dep.app), "r1")
        with psycopg.connect(dep.url(dep.app)) as conn:
            conn.execute("SET LOCAL wflo.prune = 'on'")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM events WHERE chain = 'r1'")


def test_the_application_role_keeps_langgraph_checkpoints(deployment: Deployment) -> None:
    """The checkpointer's tables come with the owner's migrations: the application role, which
    may create nothing in the schema, saves, reads and deletes checkpoints (it used to need to
    create the tables on first use)."""
    from langgraph.checkpoint.base import empty_checkpoint

    from wflo.integrations.langgraph import Checkpointer

    saver = Checkpointer(deployment.url(deployment.app))
    try:
        config = saver.put({"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}, empty_checkpoint(), {}, {})
        saver.put_writes(config, [("c", 1)], "task")
        got = saver.get_tuple(config)
        assert got is not None and got.pending_writes == [("task", "c", 1)]
        saver.delete_thread("t1")
        assert saver.get_tuple(config) is None
    finally:
        saver.close()
