"""``wflo login`` without pasting a token: the CLI (a real subprocess) asks a real server (uvicorn
in a thread) for a code, and polls while a person with a real session approves or denies it
over HTTP; Ctrl-C stops it cleanly. The browser version is in tests/integration/test_identity_oidc.py."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from wflo import _config
from wflo.auth import access, tokens
from wflo.server import create_app, serve_in_thread

ANN = "user:ann@acme.com"


@pytest.fixture
def server(sqlite_url: str) -> Iterator[str]:
    _config.configure(database=sqlite_url, cookie_secure=False)
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    acc.grant(ANN, "operator", "tenant:acme", who=acc.local("user:root"))
    app = create_app()
    app.state.devices.interval = 1
    with serve_in_thread(app) as base:
        yield base


def login(server: str, creds: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_CREDENTIALS=str(creds), PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "wflo.cli", "login", "--server", server, *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)  # fmt: skip


def shown_link(proc: subprocess.Popen[str]) -> str:
    """The verification link the CLI prints (read as it runs)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "/auth/device/verify?code=" in line:
            return line.strip()
        assert line or proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    raise AssertionError("wflo login printed no verification link")


def session(principal: str = ANN) -> tuple[dict[str, str], str]:
    sid, csrf = tokens().open_session(principal, ttl=timedelta(hours=1))
    return {"wflo_session": sid, "wflo_csrf": csrf}, csrf


def decide(link: str, decision: str) -> httpx.Response:
    cookies, csrf = session()
    page = httpx.get(link, cookies=cookies)
    assert page.status_code == 200 and "wflo CLI" in page.text, page.text
    code = link.rsplit("=", 1)[1]
    return httpx.post(link.split("?")[0], data={"code": code, "decision": decision, "csrf": csrf}, cookies=cookies)


def system(kind: str) -> list[dict[str, Any]]:
    return [e.data for e in _config.get_store().events("system") if e.type == kind]


def test_login_waits_for_the_approval_and_stores_the_token(server: str, tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    proc = login(server, creds, "--no-browser")
    link = shown_link(proc)
    assert link.startswith(server + "/auth/device/verify?code=")
    time.sleep(1.5)  # the CLI polls and hears authorization_pending meanwhile
    assert proc.poll() is None and not creds.exists()
    assert decide(link, "approve").status_code == 200
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"signed in to {server} as {ANN}" in out
    saved = json.loads(creds.read_text())
    assert saved["server"] == server and saved["token"].startswith("wflo_")
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600 and saved["token"] not in out + err
    approved = system("auth.device_approved")[0]
    assert approved["by"] == ANN and approved["client"].startswith("wflo CLI, ")
    # The stored token speaks as ann through the server.
    me = httpx.get(server + "/api/v1/me", headers={"Authorization": f"Bearer {saved['token']}"}).json()
    assert me["principal"] == ANN and me["grants"] == [{"role": "operator", "scope": "tenant:acme"}]


def test_a_denied_login_stores_nothing(server: str, tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    proc = login(server, creds, "--no-browser")
    assert decide(shown_link(proc), "deny").status_code == 200
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "denied in the browser" in err and "Traceback" not in err
    assert not creds.exists()


def test_ctrl_c_stops_the_wait_cleanly(server: str, tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    proc = login(server, creds, "--no-browser")
    shown_link(proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "login cancelled: nothing stored" in err and "Traceback" not in err
    assert not creds.exists()


def test_a_token_from_stdin_still_works(server: str, tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    _, secret = tokens().create("ci", "operator", "tenant:acme", who=access().local("user:root"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_CREDENTIALS=str(creds), PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-m", "wflo.cli", "login", "--server", server, "--token", "-"],
                          input=secret + "\n", env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "service:ci" in done.stdout, done.stderr
    assert json.loads(creds.read_text())["token"] == secret


def test_a_server_without_device_sign_in_falls_back_to_pasting(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older server answers 404 to ``POST /auth/device``: the CLI asks for a pasted token."""
    from click.testing import CliRunner

    from wflo.auth import DeviceLogin
    from wflo.cli import cli

    asked: list[str] = []
    real = DeviceLogin._post

    def older(self: DeviceLogin, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        asked.append(path)
        return (404, {"detail": "Not Found"}) if path == "/auth/device" else real(self, path, form)

    monkeypatch.setattr(DeviceLogin, "_post", older)
    monkeypatch.setenv("WFLO_CREDENTIALS", str(tmp_path / "creds.json"))
    _, secret = tokens().create("ci", "operator", "tenant:acme", who=access().local("user:root"))
    done = CliRunner().invoke(cli, ["login", "--server", server], input=secret + "\n")
    assert done.exit_code == 0, done.output
    assert "/auth/login?next=/auth/cli-token" in done.output and "service:ci" in done.output
    assert asked == ["/auth/device"]


def test_the_client_polls_at_the_interval_and_slows_down_when_told(server: str) -> None:
    """``DeviceLogin`` sleeps ``interval`` before each poll and 5 s more after each ``slow_down``
    (here its sleeps return at once, so the server says slow down)."""
    from wflo.auth import DeviceLogin

    slept: list[float] = []

    def approve_on_the_fourth_sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 4:
            assert decide(started["verification_uri_complete"], "approve").status_code == 200
            st = _config.get_store()  # as after a real wait: the last poll is long ago
            st.write(lambda cur: st.execute(cur, "UPDATE device_requests SET polled_at = ?", (st.now(-60, cur=cur),)))

    flow = DeviceLogin(server, sleep=approve_on_the_fourth_sleep)
    started = flow.start("test client")
    assert started is not None and flow.interval == 1  # what this server says
    flow.interval = 30  # as if it had said 30
    token = flow.wait(started["device_code"], deadline=time.monotonic() + 60)
    assert token.startswith("wflo_") and slept == [30, 30, 35, 40]
