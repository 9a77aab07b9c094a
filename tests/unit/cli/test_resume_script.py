"""A run started by a script, SIGKILLed, and resumed from the command line (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import wflo

    @wflo.step
    def work(i: int) -> int:
        if i == 2 and not os.path.exists(os.environ["MARKER"]):
            open(os.environ["MARKER"], "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: the run is left running
        return i * i

    @wflo.workflow  # no name=: named after the module, which must not depend on how it was loaded
    def slow_sum(n: int) -> int:
        return sum(work(i) for i in range(n))

    if __name__ == "__main__":
        print(slow_sum.options(id=sys.argv[1]).run(4))
    """
)


def _env(db: str, marker: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=db, MARKER=str(marker), PYTHONPATH=os.pathsep.join(sys.path))
    return env


def _killed_run(tmp_path: Path, db: str, run_id: str, package: bool = False) -> tuple[Path, dict[str, str]]:
    app = tmp_path / "app"
    if package:  # app/pkg/slowflow.py, imported as pkg.slowflow
        app = app / "pkg"
    app.mkdir(parents=True, exist_ok=True)
    if package:
        (app / "__init__.py").write_text("")
    (app / "slowflow.py").write_text(SCRIPT)
    env = _env(db, tmp_path / f"{run_id}.marker")
    first = subprocess.run(
        [sys.executable, str(app / "slowflow.py"), run_id], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert first.returncode == -9, first.stderr
    return app, env


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wflo.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("how", ["module", "file", "package module", "package file"])
def test_a_script_run_killed_with_sigkill_resumes_from_the_cli(sqlite_url: str, tmp_path: Path, how: str) -> None:
    # Naming does not involve the store: SQLite only (the blocked-run test below runs on both).
    store_url = sqlite_url
    package = how.startswith("package")
    run_id = f"kill-{how.replace(' ', '-')}"
    app, env = _killed_run(tmp_path, store_url, run_id, package=package)
    module = "pkg.slowflow" if package else "slowflow"
    shown = json.loads(_cli("runs", "show", run_id, "--json", env=env, cwd=tmp_path).stdout)
    assert shown["status"] == "running" and shown["workflow"] == f"{module}.slow_sum"
    # By module name (from the import root) or by file path (from anywhere).
    if how.endswith("module"):
        root = app.parent if package else app
        proc = _cli("runs", "resume", run_id, "--import", module, env=env, cwd=root)
    else:
        proc = _cli("runs", "resume", run_id, "--import", str(app / "slowflow.py"), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == 0 + 1 + 4 + 9
    done = json.loads(_cli("runs", "show", run_id, "--json", env=env, cwd=tmp_path).stdout)
    assert done["status"] == "succeeded"
    steps = [e["data"]["name"] for e in done["events"] if e["type"] == "call.completed"]
    assert steps == [f"{module}.work"] * 4  # one name for the step, whichever way it was loaded


def test_changed_code_leaves_the_run_blocked_and_fixed_code_finishes_it(store_url: str, tmp_path: Path) -> None:
    app, env = _killed_run(tmp_path, store_url, "nd")
    original = (app / "slowflow.py").read_text()
    # A code change that calls another step first: the journal holds slowflow.work there.
    (app / "slowflow.py").write_text(
        original.replace("    return sum(work(i)", "    other()\n    return sum(work(i)").replace(
            "@wflo.workflow", "@wflo.step\ndef other() -> None:\n    pass\n\n\n@wflo.workflow"
        )
    )
    proc = _cli("runs", "resume", "nd", "--import", "slowflow", env=env, cwd=app)
    assert proc.returncode == 12, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "not deterministic" in proc.stderr and "left blocked" in proc.stderr
    shown = _cli("runs", "show", "nd", env=env, cwd=tmp_path).stdout
    assert "blocked" in shown and "non_determinism" in shown and "wflo runs resume nd" in shown
    listed = json.loads(_cli("runs", "list", "--status", "blocked", "--json", env=env, cwd=tmp_path).stdout)
    assert [r["id"] for r in listed] == ["nd"]
    # The code that started it (fixed code) resumes the blocked run to its end.
    (app / "slowflow.py").write_text(original)
    proc = _cli("runs", "resume", "nd", "--import", str(app / "slowflow.py"), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == 14
