"""`wflo login` without pasting a token, end to end on this machine: a wflo server, a person
signed in to it in a "browser" (an HTTP client holding the session cookie), and `wflo login`
in a subprocess, which shows a code and waits until the person approves it.

Needs wflo[server]; runs offline in about ten seconds: python examples/cli_device_login.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    print("examples/cli_device_login.py needs the server extra: pip install 'wflo[server]'")
    sys.exit(0)

import httpx

import wflo
from wflo import auth
from wflo.server import FIRST_SIGNIN_PATH, FirstSignIn, create_app, serve_in_thread


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wflo-device-") as work:
        wflo.configure(database=f"sqlite:///{work}/wflo.db", cookie_secure=False)
        app = create_app()
        code = FirstSignIn(auth.access()).issue("user:ops")  # so "user:ops" can sign in without SSO here
        env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
        env["WFLO_CREDENTIALS"] = f"{work}/credentials.json"
        with serve_in_thread(app) as base, httpx.Client(base_url=base) as browser:
            browser.post(FIRST_SIGNIN_PATH, data={"code": code})  # the person's browser session

            # The terminal: wflo login prints the address and the code, then polls.
            cmd = [sys.executable, "-m", "wflo.cli", "login", "--server", base, "--no-browser"]
            login = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert login.stdout is not None
            link = ""
            while "?code=" not in link:
                line = login.stdout.readline()
                assert line, login.stderr.read() if login.stderr else "wflo login stopped"
                print("terminal:", line.rstrip())
                link = line.strip()

            # The browser: the page shows the code, who asks and the roles; the person approves.
            page = browser.get(link)
            user_code = link.rsplit("=", 1)[1]
            print("browser:  the page shows", user_code, "->", "Approve" in page.text)
            form = {"code": user_code, "decision": "approve", "csrf": browser.cookies["wflo_csrf"]}
            print("browser: ", browser.post("/auth/device/verify", data=form).status_code, "approved")

            out, err = login.communicate(timeout=60)
            print("terminal:", out.strip().splitlines()[-1])
            assert login.returncode == 0, err
            whoami = subprocess.run([sys.executable, "-m", "wflo.cli", "whoami"], env=env, capture_output=True,
                                    text=True, check=True)  # fmt: skip
            print("terminal: wflo whoami ->", whoami.stdout.strip())
        kinds = [e.type for e in wflo.config.get_store().events("system")]
        print("on the record:", [k for k in kinds if k.startswith(("auth.device", "token."))])


if __name__ == "__main__":
    main()
