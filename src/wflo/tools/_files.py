"""``files``: read, list and (optionally) write files for an agent, confined to one directory.

Every path is walked from a descriptor of the root, one component at a time, with
``O_NOFOLLOW`` (``openat`` style), so a symlink anywhere in the path, even one created between
a check and the use, is refused rather than followed. Before anything is opened, the path must
be relative and free of ``..``. Files must be regular files with one link (a hard link to a
file outside the root looks like any other file, so multi-linked files are refused), never
devices, FIFOs or sockets. Writes go to a temporary file in the same directory, are synced,
then renamed over the target, so a reader never sees half a file. ``max_bytes`` caps a read
(the rest is cut, ``truncated: true``) and refuses a larger write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from typing import Any

from .._errors import UserError
from ..approvals import Approval
from ..sandbox import parse_size
from ._errors import ToolRefused
from ._manifest import Capabilities, Effects
from ._tool import Tool

_READ = Effects(read_only=True, idempotent=True)

__all__ = ["files"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_MAX_ENTRIES = 1000
_DEFAULT_APPROVAL = Approval(message="The agent wants to write a file")


class _Default:
    pass


_DEFAULT = _Default()


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class _Root:
    def __init__(self, root: str, max_bytes: int, prefix: str) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.prefix = prefix

    def refuse(self, tool: str, reason: str) -> ToolRefused:
        return ToolRefused(tool=self.prefix + tool, reason=reason)

    def _parts(self, tool: str, path: str) -> list[str]:
        if not isinstance(path, str) or "\x00" in path:
            raise self.refuse(tool, "the path must be a string without NUL characters")
        if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
            raise self.refuse(tool, f"absolute paths are not allowed ({path!r}); give a path relative to the root")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(tool, f"'..' is not allowed in a path ({path!r})")
        return parts

    @contextlib.contextmanager
    def _open_dir(self, tool: str, parts: list[str], path: str) -> Iterator[int]:
        """A descriptor of the directory ``parts`` under the root, opened without following links."""
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise self.refuse(tool, f"the root directory cannot be opened: {exc.strerror}") from None
        try:
            for part in parts:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ENOTDIR and _is_link(part, fd):
                        exc = OSError(errno.ELOOP, exc.strerror)
                    raise self._refusal(tool, exc, path, part) from None
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _refusal(self, tool: str, exc: OSError, path: str, part: str) -> ToolRefused:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            return self.refuse(tool, f"{path!r}: {part!r} is a symbolic link; links are not followed")
        if exc.errno == errno.ENOTDIR:
            return self.refuse(tool, f"{path!r}: {part!r} is not a directory")
        if exc.errno == errno.ENOENT:
            return self.refuse(tool, f"{path!r} does not exist")
        return self.refuse(tool, f"{path!r}: {exc.strerror}")

    def _check_file(self, tool: str, st: os.stat_result, path: str) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise self.refuse(tool, f"{path!r} is a symbolic link; links are not followed")
        if not stat.S_ISREG(st.st_mode):
            raise self.refuse(tool, f"{path!r} is not a regular file")
        if st.st_nlink > 1:
            raise self.refuse(tool, f"{path!r} has {st.st_nlink} hard links; multi-linked files are refused")

    def read(self, path: str) -> dict[str, Any]:
        parts = self._parts("read_file", path)
        if not parts:
            raise self.refuse("read_file", "give the path of a file, not the root")
        with self._open_dir("read_file", parts[:-1], path) as dfd:
            try:
                # O_NONBLOCK: opening a FIFO must not hang; it is refused by the type check next.
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                raise self._refusal("read_file", exc, path, parts[-1]) from None
        try:
            st = os.fstat(fd)
            self._check_file("read_file", st, path)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(self.max_bytes + 1)
        truncated = len(data) > self.max_bytes
        return {"path": "/".join(parts), "size": st.st_size, "truncated": truncated,
                "content": data[: self.max_bytes].decode("utf-8", errors="replace")}  # fmt: skip

    def list(self, path: str = ".") -> dict[str, Any]:
        parts = self._parts("list_dir", path)
        entries: list[dict[str, Any]] = []
        truncated = False
        with self._open_dir("list_dir", parts, path) as dfd, os.scandir(dfd) as it:
            for entry in sorted(it, key=lambda e: e.name):
                if len(entries) == _MAX_ENTRIES:
                    truncated = True
                    break
                st = entry.stat(follow_symlinks=False)
                kind = ("dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode)
                        else "symlink" if stat.S_ISLNK(st.st_mode) else "other")  # fmt: skip
                entries.append({"name": entry.name, "type": kind, "size": st.st_size if kind == "file" else None})
        return {"path": "/".join(parts) or ".", "entries": entries, "truncated": truncated}

    def write(self, path: str, content: str) -> dict[str, Any]:
        parts = self._parts("write_file", path)
        if not parts:
            raise self.refuse("write_file", "give the path of a file, not the root")
        if not isinstance(content, str):
            raise self.refuse("write_file", "content must be a string")
        data = content.encode("utf-8")
        if len(data) > self.max_bytes:
            raise self.refuse(
                "write_file", f"the content is {len(data)} bytes; at most {self.max_bytes} may be written"
            )
        leaf = parts[-1]
        with self._open_dir("write_file", parts[:-1], path) as dfd:
            mode = 0o644
            try:
                st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._refusal("write_file", exc, path, leaf) from None
            else:
                self._check_file("write_file", st, path)
                mode = stat.S_IMODE(st.st_mode)
            # Not named after the leaf: a name the system takes (up to 255 bytes) must not fail
            # here for the temporary's longer one (a raw OSError reached the agent).
            tmp = f".wflo-tmp-{secrets.token_hex(8)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, mode, dir_fd=dfd)
            except OSError as exc:
                raise self._refusal("write_file", exc, path, leaf) from None
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                if isinstance(exc, OSError):  # a name too long, a full disk: the agent is told why
                    raise self._refusal("write_file", exc, path, leaf) from None
                raise
            with contextlib.suppress(OSError):
                os.fsync(dfd)  # the rename itself survives a crash
        return {"path": "/".join(parts), "bytes": len(data)}


def files(
    root: str | os.PathLike[str],
    *,
    writable: bool = False,
    max_bytes: int | str = "1MiB",
    approval: Approval | _Default | None = _DEFAULT,
    prefix: str = "",
) -> list[Tool[..., dict[str, Any]]]:
    """Tools confined to the directory ``root``: ``read_file(path)``, ``list_dir(path)`` and,
    when ``writable``, ``write_file(path, content)``.

    Args:
        root: the directory the agent may use (it must exist).
        writable: add ``write_file`` (risk ``"high"``); without it the agent has no way to write.
        max_bytes: a read returns at most this much (``truncated: true``); a larger write is refused.
        approval: the policy for ``write_file`` (default: ``wflo.Approval(...)``, every write needs
            a human inside a run); ``None`` for none.
        prefix: prepended to the tool names (two roots, two sets of tools: ``prefix="docs_"``).

    Returns:
        The tools, to pass to your agent (``[t.openai_schema() for t in tools]``).
    """
    path = os.path.realpath(os.fspath(root))  # the developer's root is trusted; links in it are resolved once
    if not os.path.isdir(path):
        raise UserError(f"files(root=...) must be an existing directory, got {os.fspath(root)!r}")
    where = _Root(path, parse_size(max_bytes, "max_bytes"), prefix)
    write_policy = _DEFAULT_APPROVAL if isinstance(approval, _Default) else approval
    cap = where.max_bytes

    def read_file(path: str) -> dict[str, Any]:
        return where.read(path)

    def list_dir(path: str = ".") -> dict[str, Any]:
        return where.list(path)

    def write_file(path: str, content: str) -> dict[str, Any]:
        return where.write(path, content)

    tools: list[Tool[..., dict[str, Any]]] = [
        Tool(read_file, name=prefix + "read_file", risk="low", effects=_READ, capabilities=Capabilities(read=(path,)),
             description=f"Read a text file (path relative to the workspace root); at most {cap} bytes are returned."),
        Tool(list_dir, name=prefix + "list_dir", risk="low", effects=_READ, capabilities=Capabilities(read=(path,)),
             description="List a directory of the workspace (path relative to the root; '.' for the root)."),
    ]  # fmt: skip
    if writable:
        tools.append(Tool(write_file, name=prefix + "write_file", risk="high", approval=write_policy,
                          effects=Effects(destructive=True, idempotent=True), capabilities=Capabilities(write=(path,)),
                          description=f"Write a text file (path relative to the workspace root; replaced "
                                      f"whole; at most {cap} bytes)."))  # fmt: skip
    if writable and write_policy is None:
        tools[-1].approval_waived = True  # the developer said no approval: a grant is not needed to say so
    return tools
