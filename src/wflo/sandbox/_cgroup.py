"""Per-execution cgroups (memory and process count) where the host lets wflo create them.

cgroup v2 (one unified hierarchy) and v1 (one hierarchy per controller) are both handled. A
group is made under wflo's own cgroup for each execution, the sandbox's first process joins it
before it drops privileges, and afterwards the supervisor reads whether the memory limit was
hit, kills anything left in the group and removes it. Where groups cannot be created (not
root, a read-only ``/sys/fs/cgroup``, v2 without the controllers delegated) the rlimits still
bound each process and the result's ``cgroup`` field says ``None``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) → this process's cgroup path."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as fh:
        for line in fh:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def version() -> int:
    """2 on a unified (cgroup v2) host, 1 on a v1 or hybrid one (v1 controllers)."""
    return 2 if (ROOT / "cgroup.controllers").exists() else 1


class CGroup:
    """One execution's group: ``limit()`` before start, ``join()`` in the child, ``close()`` after."""

    def __init__(self, dirs: dict[str, Path], version: int) -> None:
        self.dirs = dirs
        self.version = version

    @classmethod
    def create(cls, memory: int, processes: int, *, tag: str = "") -> CGroup | None:
        """A new group beside this process's own (``tag``: put in its name after ``wflo-sbx-``)."""
        if os.getuid() != 0:
            return None
        own = _own_paths()
        name = f"wflo-sbx-{tag}{uuid.uuid4().hex[:12]}"
        try:
            if (ROOT / "cgroup.controllers").exists():
                parent = ROOT / own.get("", "/").lstrip("/")
                enabled = (parent / "cgroup.subtree_control").read_text().split()
                if "memory" not in enabled or "pids" not in enabled:
                    return None
                d = parent / name
                d.mkdir()
                group = cls({"memory": d, "pids": d}, 2)
                (d / "memory.max").write_text(str(memory))
                (d / "memory.swap.max").exists() and (d / "memory.swap.max").write_text("0")
                (d / "pids.max").write_text(str(processes + 4))
                return group
            dirs: dict[str, Path] = {}
            group = cls(dirs, 1)
            for controller in ("memory", "pids"):
                base = ROOT / controller
                if not (base / "cgroup.procs").exists():
                    group.close()
                    return None
                d = base / own.get(controller, "/").lstrip("/") / name
                d.mkdir()
                dirs[controller] = d
            (dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory))
            (dirs["pids"] / "pids.max").write_text(str(processes + 4))
            return group
        except OSError:
            with contextlib.suppress(UnboundLocalError):
                group.close()
            return None

    @classmethod
    def named(cls, prefix: str) -> list[Path]:
        """The groups beside this process's own whose names start with ``prefix`` (on cgroup
        v1, one directory per controller)."""
        own = _own_paths()
        if version() == 2:
            parents = [ROOT / own.get("", "/").lstrip("/")]
        else:
            parents = [ROOT / c / own.get(c, "/").lstrip("/") for c in ("memory", "pids")]
        found: list[Path] = []
        for parent in parents:
            with contextlib.suppress(OSError):
                found += [d for d in parent.glob(f"{prefix}*") if d.is_dir()]
        return found

    @classmethod
    def available(cls) -> bool:
        """Whether this host lets wflo make per-execution groups."""
        group = cls.create(64 << 20, 8)
        if group is None:
            return False
        group.close()
        return True

    def join(self) -> None:
        """Called in the child between fork and exec (still root)."""
        pid = str(os.getpid())
        for d in dict.fromkeys(self.dirs.values()):
            with open(d / "cgroup.procs", "w") as fh:
                fh.write(pid)

    def memory_exceeded(self) -> bool:
        d = self.dirs.get("memory")
        if d is None:
            return False
        with contextlib.suppress(OSError, ValueError):
            if self.version == 2:
                events = dict(line.split() for line in (d / "memory.events").read_text().splitlines())
                return int(events.get("oom_kill", 0)) > 0
            control = dict(line.split() for line in (d / "memory.oom_control").read_text().splitlines())
            return int(control.get("oom_kill", 0)) > 0
        return False

    def close(self) -> None:
        """Kill whatever is still in the group, then remove it."""
        for d in dict.fromkeys(self.dirs.values()):
            for _ in range(50):
                try:
                    pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the last processes are still exiting
                    time.sleep(0.01)
