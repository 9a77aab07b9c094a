"""``wflo admin``, ``wflo grants``, ``wflo users``, ``wflo tokens``, ``wflo login``/``logout``/``whoami``,
``wflo server``."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import webbrowser
from typing import Any

import click

from .. import config
from ..auth import (
    GLOBAL,
    ROLES,
    Credentials,
    DeviceLogin,
    Grant,
    Identities,
    ServerClient,
    TokenInfo,
    access,
    check_principal,
    credentials_path,
    forget_credentials,
    load_credentials,
    os_user,
    save_credentials,
    tokens,
)
from ..config import settings
from ..errors import UserError
from ._app import INTERRUPTED, Table, cli, console, dump_json, err_console, handle_errors


@cli.group("admin")
def admin_group() -> None:
    """Identity administration: the first admin."""


@admin_group.command("bootstrap")
@click.option("--principal", help="Who becomes the first admin (default: WFLO_PRINCIPAL).")
@handle_errors
def admin_bootstrap(principal: str | None) -> None:
    """Make the first admin of a store that has none (refused once an admin exists)."""
    acc = access()
    who = acc.local()
    grant = acc.bootstrap(principal or who.id, who=who)
    console.print(f"{grant.principal} is the admin (recorded; via local as OS user {who.os_user})", markup=False)


@cli.group("grants")
def grants_group() -> None:
    """Who holds which role, where."""


@grants_group.command("list")
@click.option("--principal", help="Only this principal's grants.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def grants_list(principal: str | None, as_json: bool) -> None:
    """List role grants (role, scope, who granted it)."""
    creds = load_credentials()
    if creds is not None:
        found = [Grant(**g) for g in ServerClient(creds).call("GET", "/api/v1/grants")]
        found = [g for g in found if not principal or g.principal == principal]
    else:
        config.get_store(create=False)  # only reads: a store that is not there is named, not created
        found = access().grants(check_principal(principal) if principal else None)
    if as_json:
        dump_json([_grant(g) for g in found])
        return
    if not found:
        console.print("no grants (wflo admin bootstrap makes the first admin)")
        return
    table = Table(box=None, header_style="bold")
    for col in ("principal", "role", "scope", "granted by", "via", "at"):
        table.add_column(col)
    for g in found:
        table.add_row(g.principal, g.role, g.scope, g.granted_by, f"{g.via}/{g.source}", g.granted_at[:19])
    console.print(table)


def _grant(g: Any) -> dict[str, Any]:
    return {k: getattr(g, k) for k in ("principal", "role", "scope", "granted_by", "via", "source", "granted_at")}


@grants_group.command("remove")
@click.argument("principal")
@click.argument("role")
@click.option("--scope", default=GLOBAL, show_default=True)
@handle_errors
def grants_remove(principal: str, role: str, scope: str) -> None:
    """Remove a role from a principal (needs admin; recorded)."""
    creds = load_credentials()
    if creds is not None:
        body = {"principal": principal, "role": role, "scope": scope}
        removed = ServerClient(creds).call("POST", "/api/v1/grants/remove", body)["removed"]
        console.print(
            f"{principal}: {'removed' if removed else 'did not hold'} {role} on {scope} (via {creds.server})",
            markup=False,
        )
        return
    acc = access()
    who = acc.require_local("grants:write", scope)
    removed = acc.revoke(principal, role, scope, who=who)
    console.print(f"{principal}: {'removed' if removed else 'did not hold'} {role} on {scope}", markup=False)


@cli.group("users")
def users_group() -> None:
    """People and service accounts: list them, disable and enable them, release a sign-in binding."""


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def users_list(as_json: bool) -> None:
    """Everyone known here: roles, live tokens and sessions, disabled (by whom, why) or bound."""
    creds = load_credentials()
    if creds is not None:
        found = ServerClient(creds).call("GET", "/api/v1/users")
    else:
        config.get_store(create=False)  # only reads: a store that is not there is named, not created
        if settings().require_auth:
            access().require_local("grants:read")
        found = Identities(access()).people()
    if as_json:
        dump_json(found)
        return
    if not found:
        console.print("nobody yet (wflo admin bootstrap makes the first admin)")
        return
    table = Table(box=None, header_style="bold")
    for col in ("principal", "roles", "tokens", "sessions", "last sign-in", "state"):
        table.add_column(col)
    for u in found:
        state = (f"disabled {str(u['disabled_at'])[:10]} by {u['disabled_by']}: {u['disabled_reason']}"
                 if u["disabled"] else "bound" if u.get("bound") else "active")  # fmt: skip
        roles = ", ".join(f"{g['role']}@{g['scope']}" for g in u["grants"]) or "-"
        table.add_row(u["id"], roles, str(u["tokens"]), str(u["sessions"]), (u["last_login_at"] or "-")[:19], state)
    console.print(table, soft_wrap=True)


def _users_change(action: str, principal: str, reason: str, **extra: Any) -> dict[str, Any]:
    """Disable, enable or unbind through the signed-in server, else on the local store."""
    creds = load_credentials()
    if creds is not None:
        done: dict[str, Any] = ServerClient(creds).call(
            "POST", f"/api/v1/users/{action}", {"principal": principal, "reason": reason, **extra}
        )
        return done
    acc = access()
    who = acc.require_local("users:write")
    people = Identities(acc)
    if action == "disable":
        made = people.disable(principal, reason=reason, who=who)
    elif action == "enable":
        made = people.enable(principal, reason=reason, who=who)
    else:
        made = people.unbind(principal, reason=reason, who=who, remove_grants=bool(extra.get("remove_grants")))
    return {"action": made.action, **made.record()}


def _say_change(done: dict[str, Any], as_json: bool) -> None:
    if as_json:
        dump_json(done)
        return
    who, n = done["principal"], len(done.get("tokens_revoked", []))
    line = {"disabled": f"{who} disabled", "enabled": f"{who} enabled (it signs in afresh)",
            "unbound": f"{who} released from {done.get('issuer')} (subject {done.get('subject')}): "
                       "its next sign-in binds afresh"}[done["action"]]  # fmt: skip
    if done["action"] != "enabled":
        line += f"; {done['sessions_ended']} session(s) ended, {n} token(s) revoked"
    if done.get("grants_removed"):
        line += "; roles removed: " + ", ".join(f"{g['role']}@{g['scope']}" for g in done["grants_removed"])
    console.print(line + " (recorded)", markup=False)
    made = done.get("tokens_made") or []
    if made:
        console.print(f"{len(made)} token(s) {who} made still work (service accounts); review them:", markup=False)
        for t in made:
            console.print(f"  {t['id']}  {t['name']}  wflo_{t['prefix']}_…  {t['principal']}  {t['role']}@{t['scope']}",
                          markup=False)  # fmt: skip


@users_group.command("disable")
@click.argument("principal")
@click.option("--reason", required=True, help="Why (recorded on the system chain).")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def users_disable(principal: str, reason: str, as_json: bool) -> None:
    """Disable a person or service account (needs admin; recorded).

    Its sessions end and the tokens acting as it are revoked at once; its sign-ins (single
    sign-on, wflo login, a first-start link) and approval votes are refused. Tokens it made for
    service accounts keep working and are listed for review. Not yourself, not the last admin.
    """
    _say_change(_users_change("disable", principal, reason), as_json)


@users_group.command("enable")
@click.argument("principal")
@click.option("--reason", default="", help="Why (recorded on the system chain).")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def users_enable(principal: str, reason: str, as_json: bool) -> None:
    """Let a disabled principal sign in again (its revoked tokens and sessions stay revoked)."""
    _say_change(_users_change("enable", principal, reason), as_json)


@users_group.command("unbind")
@click.argument("principal")
@click.option("--reason", required=True, help="Why (recorded on the system chain).")
@click.option("--remove-grants", is_flag=True, help="Also remove its roles (a mailbox given to someone else).")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def users_unbind(principal: str, reason: str, remove_grants: bool, as_json: bool) -> None:
    """Release a person's binding to its single sign-on account (after a provider change, or a
    mailbox given to someone else): the next sign-in with that email binds afresh. Its sessions
    and personal tokens end (needs admin; recorded)."""
    _say_change(_users_change("unbind", principal, reason, remove_grants=remove_grants), as_json)


@cli.group("tokens")
def tokens_group() -> None:
    """API tokens for workers, CI and scripts (service accounts)."""


@tokens_group.command("create")
@click.option("--name", required=True, help="The service account: the token acts as service:NAME.")
@click.option("--role", required=True, type=click.Choice(list(ROLES)))
@click.option("--tenant", help="Limit the token to one tenant (default: everywhere).")
@click.option("--scope", help="Or a full scope: tenant:NAME/project:NAME.")
@click.option("--expires", default="90d", show_default=True, help="30d, 12h, … or 'never'.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def tokens_create(name: str, role: str, tenant: str | None, scope: str | None, expires: str, as_json: bool) -> None:
    """Create a token; it is shown once (store it in your secret manager)."""
    if tenant and scope:
        raise UserError("give --tenant or --scope, not both")
    where = scope or (f"tenant:{tenant}" if tenant else GLOBAL)
    until = None if expires == "never" else expires
    creds = load_credentials()
    if creds is not None:  # signed in: created by the server, as you
        body = {"name": name, "role": role, "scope": where, "expires": until}
        made = ServerClient(creds).call("POST", "/api/v1/tokens", body)
        info, secret = TokenInfo(**{k: made[k] for k in _TOKEN_KEYS}), str(made["token"])
    else:
        info, secret = tokens().create(
            name, role, where, expires=until, who=access().require_local("tokens:write", where)
        )
    if as_json:
        dump_json({"id": info.id, "token": secret, "prefix": info.prefix, "expires_at": info.expires_at})
        return
    console.print(
        f"token {info.id} for {info.principal}: {role} on {where}, expires {info.expires_at or 'never'}", markup=False
    )
    console.print("shown once, store it now:")
    click.echo(secret)


@tokens_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def tokens_list(as_json: bool) -> None:
    """List tokens (prefix, role, scope, state); never their secrets."""
    creds = load_credentials()
    if creds is None:
        config.get_store(create=False)  # only reads: a store that is not there is named, not created
    if creds is None and settings().require_auth:
        access().require_local("tokens:read")
    found = (
        [TokenInfo(**{k: t[k] for k in _TOKEN_KEYS}) for t in ServerClient(creds).call("GET", "/api/v1/tokens")]
        if creds is not None
        else tokens().list()
    )
    if as_json:
        dump_json([{**_token(t), "state": t.state} for t in found])
        return
    if not found:
        console.print("no API tokens (wflo tokens create --name ci --role operator)")
        return
    table = Table(box=None, header_style="bold")
    for col in ("id", "name", "prefix", "role", "scope", "state", "expires", "last used"):
        table.add_column(col)
    for t in found:
        table.add_row(
            t.id[:8], t.name, f"wflo_{t.prefix}_…", t.role, t.scope, t.state, (t.expires_at or "never")[:19],
            (t.last_used_at or "-")[:19],
        )  # fmt: skip
    console.print(table)


_TOKEN_KEYS = ("id", "name", "principal", "prefix", "role", "scope", "created_by", "created_at", "expires_at",
               "revoked_at", "last_used_at")  # fmt: skip


def _token(t: Any) -> dict[str, Any]:
    return {k: getattr(t, k) for k in _TOKEN_KEYS}


@tokens_group.command("revoke")
@click.argument("token")
@handle_errors
def tokens_revoke(token: str) -> None:
    """Revoke a token by id, prefix or name (it stops working at once; recorded)."""
    creds = load_credentials()
    if creds is not None:
        client = ServerClient(creds)
        match = [t for t in client.call("GET", "/api/v1/tokens") if token in (t["id"], t["prefix"], t["name"])]
        if len(match) != 1:
            raise UserError(f"no single token {token!r} on {creds.server} (wflo tokens list)")
        done = client.call("DELETE", f"/api/v1/tokens/{match[0]['id']}")
        console.print(f"token {done['id']} ({done['name']}, wflo_{done['prefix']}_…) revoked", markup=False)
        return
    acc = access()
    who = acc.require_local("tokens:write")
    info = tokens().revoke(token, who=who)
    console.print(f"token {info.id} ({info.name}, wflo_{info.prefix}_…) revoked", markup=False)


# ----------------------------------------------------------------- login
def _get_me(server: str, token: str) -> dict[str, Any]:
    me: dict[str, Any] = ServerClient(Credentials(server=server, token=token)).call("GET", "/api/v1/me")
    return me


@cli.command("login")
@click.option("--server", required=True, envvar="WFLO_SERVER", help="The wflo server URL.")
@click.option("--token", "token", help="An API token (wflo tokens create); read from stdin if '-'.")
@click.option("--no-browser", is_flag=True, help="Only print the sign-in address; do not open a browser.")
@handle_errors
def login_cmd(server: str, token: str | None, no_browser: bool) -> None:
    """Sign the CLI in to a wflo server; the credentials are stored with 0600 permissions.

    Without --token: shows a code and opens the server's page where you (signed in) approve
    it; the CLI waits for the approval and receives a personal token (Ctrl-C stops it).
    """
    if token == "-":
        token = sys.stdin.readline().strip()
    if not token:
        token = _device_login(server, open_browser=not no_browser)
    me = _get_me(server, token)
    path = save_credentials(Credentials(server=server, token=token))
    console.print(f"signed in to {server} as {me['principal']} (credentials in {path}, mode 0600)", markup=False)


def _device_login(server: str, *, open_browser: bool) -> str:
    flow = DeviceLogin(server)
    started = flow.start(f"wflo CLI, {os_user()} on {socket.gethostname()}")
    if started is None:  # a server without device sign-in: sign in, create a token, paste it
        url = server.rstrip("/") + "/auth/login?next=/auth/cli-token"
        console.print(f"open {url} in a browser, sign in, create a CLI token, then paste it here:")
        token = sys.stdin.readline().strip()
        if not token:
            raise UserError("no token given")
        return token
    code, link = started["user_code"], started["verification_uri_complete"]
    console.print(f"Open {started['verification_uri']} and enter the code {code}, or open:\n  {link}",
                  soft_wrap=True, markup=False)  # fmt: skip
    if open_browser:
        with contextlib.suppress(Exception):  # no browser here (SSH, CI): the printed link serves
            webbrowser.open(link)
    deadline = time.monotonic() + float(started["expires_in"])
    try:
        with console.status(f"waiting for the approval of {code} in the browser…") as status:

            def tick() -> None:
                status.update(
                    f"waiting for the approval of {code} in the browser… ({int(deadline - time.monotonic())} s left)"
                )

            return flow.wait(str(started["device_code"]), deadline=deadline, tick=tick)
    except KeyboardInterrupt:
        err_console.print("login cancelled: nothing stored")
        sys.exit(INTERRUPTED)


@cli.command("logout")
@handle_errors
def logout_cmd() -> None:
    """Forget the stored credentials."""
    console.print("signed out" if forget_credentials() else f"not signed in ({credentials_path()} does not exist)")


@cli.command("whoami")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def whoami_cmd(as_json: bool) -> None:
    """Who the CLI speaks as: the signed-in server identity, or the local principal."""
    creds = load_credentials()
    if creds:
        me = _get_me(creds.server, creds.token)
        me["server"] = creds.server
    else:
        config.get_store(create=False)  # only reads: a store that is not there is named, not created
        who = access().local()
        me = {
            "principal": who.id, "via": "local", "os_user": who.os_user,
            "grants": [{"role": r, "scope": s} for r, s in who.grants], "require_auth": settings().require_auth,
        }  # fmt: skip
    if as_json:
        dump_json(me)
        return
    roles = ", ".join(f"{g['role']}@{g['scope']}" for g in me.get("grants", [])) or "no roles"
    where = f"via {me['via']}" + (f" (OS user {me['os_user']})" if me.get("os_user") else "")
    console.print(
        f"{me['principal']} {where}: {roles}" + (f" on {me['server']}" if me.get("server") else ""), markup=False
    )


@cli.command("server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8700, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--admin",
    "admin_principal",
    help="On a store with no admin: who the one-time sign-in link makes admin (default: WFLO_PRINCIPAL).",
)
@handle_errors
def server_cmd(host: str, port: int, admin_principal: str | None) -> None:
    """Run the wflo API server and panel (needs wflo[server]; docs/deployment.md).

    On a store with no admin yet it prints a one-time sign-in link (valid one hour, used once)
    that makes --admin the first admin, so you can sign in before single sign-on is set up.
    """
    try:
        import uvicorn

        from ..server import FIRST_SIGNIN_PATH, FirstSignIn, create_app
    except ImportError as exc:
        raise UserError(f"the server needs its extra: pip install 'wflo[server]' ({exc.name} is missing)") from None
    app = create_app()  # migrates the store first
    acc = access()
    code = FirstSignIn(acc).issue(admin_principal or acc.local().id)
    if code is not None:
        base = (settings().server_url or f"http://{host}:{port}").rstrip("/")
        console.print(
            f"No admin yet. Open this link within an hour to sign in as {admin_principal or acc.local().id} "
            f"(it works once):\n  {base}{FIRST_SIGNIN_PATH}?code={code}",
            soft_wrap=True,
            markup=False,
        )
    # Open live streams (the panel's server-sent events) would otherwise hold a stopping server
    # until every browser closes; after 5 s they are cut and the browsers reconnect elsewhere.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
