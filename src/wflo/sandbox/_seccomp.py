"""The seccomp filter bwrap installs before it starts the sandboxed program.

Built with the host's libseccomp (``libseccomp.so.2``, present wherever systemd is) through
ctypes, exported as a classic BPF program and handed to ``bwrap --seccomp FD``. The filter
allows by default and refuses, with an error code the program can handle, the system calls a
sandbox has no business making: tracing other processes, kernel keyrings, mounts, new
namespaces, BPF, io_uring, perf, module loading, terminal injection (``TIOCSTI``), memory
outside every file-size and address-space limit (``memfd_create``, SysV ``shmget``), and
sockets other than ``AF_UNIX`` pairs (``AF_INET``/``AF_INET6`` too when the network is on).
Other architectures' system call tables (a 32-bit ``int 0x80`` on x86_64, x32) are killed by
libseccomp's bad-architecture action.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import socket

from .._errors import SandboxUnavailableError

_ACT_ALLOW = 0x7FFF0000
_CMP_EQ = 4
_CMP_MASKED_EQ = 7
CLONE_NEWUSER = 0x10000000
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

DENIED = (
    # other processes and the kernel
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "unshare", "setns",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "settimeofday", "clock_settime", "adjtimex",
    "name_to_handle_at", "open_by_handle_at", "lookup_dcookie", "vhangup", "iopl", "ioperm",
    # memory that no file-size cap or per-process address-space limit counts: a memfd (up to
    # 64 per process, each as large as a file may be) and SysV shared memory (segments outlive
    # the mapping; the IPC namespace's default caps are terabytes). Only a memory cgroup, which
    # an ordinary user's sandbox has not, would count them.
    "memfd_create", "shmget",
)  # fmt: skip


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SandboxUnavailableError(backend="bwrap", detail=f"libseccomp is missing ({exc})",
                                      hint="Install it: apt-get install libseccomp2") from None  # fmt: skip
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


@functools.cache
def program(network: bool) -> bytes:
    """The compiled BPF program (cached per network setting)."""
    lib = _lib()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SandboxUnavailableError(backend="bwrap", detail="seccomp_init failed", hint="")

    def rule(action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not on this architecture / this libseccomp: nothing to deny
            return
        arr = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if rc < 0:
            raise SandboxUnavailableError(backend="bwrap", detail=f"seccomp rule for {name} failed ({rc})", hint="")

    try:
        for name in DENIED:
            rule(_errno(errno.EPERM), name)
        # clone3 passes its flags in memory a filter cannot read: make libc fall back to clone.
        rule(_errno(errno.ENOSYS), "clone3")
        for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, CLONE_NEWUSER, 0x20000000, 0x40000000):
            rule(_errno(errno.EPERM), "clone", (0, _CMP_MASKED_EQ, flag, flag))
        for request in (TIOCSTI, TIOCLINUX):
            rule(_errno(errno.EPERM), "ioctl", (1, _CMP_MASKED_EQ, 0xFFFFFFFF, request))
        allowed = {socket.AF_UNIX} | ({socket.AF_INET, socket.AF_INET6} if network else set())
        for family in range(46):  # AF_MAX on current kernels
            if family not in allowed:
                rule(_errno(errno.EAFNOSUPPORT), "socket", (0, _CMP_EQ, family, 0))
        fd = os.memfd_create("wflo-seccomp-export", 0)
        try:
            if lib.seccomp_export_bpf(ctx, fd) < 0:
                raise SandboxUnavailableError(backend="bwrap", detail="seccomp_export_bpf failed", hint="")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def program_fd(network: bool) -> int:
    """A file descriptor holding the program, for ``bwrap --seccomp FD`` (the caller closes it)."""
    data = program(network)
    fd = os.memfd_create("wflo-seccomp", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
