"""The first program of every bwrap sandbox (cold or warm), run by the sandbox's own Python.

``python3 -I -c SOURCE NPROC STATUS_FD FORWARD`` inside the sandbox:

1. sets ``RLIMIT_NPROC`` *inside the sandbox's user namespace*. Since Linux 5.14 the kernel
   counts processes per (user namespace, uid), so the limit counts only this sandbox's
   processes, whoever else runs as the same host uid (a laptop user's hundreds of processes).
   Set outside, before bwrap, it counted them all and sandboxes failed to start;
2. with an egress allow-list, starts the forwarder: a process listening on the sandbox's own
   loopback (``127.0.0.1:3128``, a network namespace with nothing else in it) that carries each
   connection to the host's egress proxy through the Unix socket bound at ``FORWARD``;
3. writes one byte to ``STATUS_FD``: the sandbox exists (the supervisor tells "bwrap could not
   start" from "the program failed" by this byte) and, for a warm sandbox, is ready;
4. reads one header from stdin (``LENGTH\\n`` then that many bytes of ``marshal`` data, which
   needs no import, unlike ``json``; the rest of stdin is the program's) and runs the Python
   source in this interpreter or ``exec``s the command.
"""

from __future__ import annotations

import marshal

FORWARD_PORT = 3128
SOCKET = "/run/wflo/egress.sock"

SOURCE = r"""def _wflo_start():
    import marshal, os, resource, sys
    nproc, status, forward = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if forward:
        _wflo_forward(forward, status)
    os.write(status, b"R")
    os.close(status)

    def read(n):
        b = bytearray()
        while len(b) < n:
            c = os.read(0, min(65536, n - len(b)))
            if not c:
                raise SystemExit(0)
            b += c
        return bytes(b)

    size = b""
    while not size.endswith(b"\n"):
        size += read(1)
    h = marshal.loads(read(int(size)))
    if h["python"] is None:
        try:
            os.execvp(h["argv"][0], h["argv"])
        except OSError as e:
            sys.stderr.write(f"sandbox: cannot run {h['argv'][0]!r}: {e.strerror}\n")
            os._exit(127)
    sys.argv = ["-c"]
    m = sys.modules["__main__"].__dict__
    for k in [k for k in m if k not in ("__name__", "__doc__", "__builtins__", "__loader__", "__spec__", "__package__")]:
        del m[k]
    return compile(h["python"], "<string>", "exec")


def _wflo_forward(path, status):
    import os, selectors, socket
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(64)
    if os.fork():
        srv.close()
        return
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(status)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    peer, done = {}, {}
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is srv:
                c = srv.accept()[0]
                u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    u.connect(path)
                except OSError:
                    c.close()
                    continue
                peer[c], peer[u], done[c], done[u] = u, c, False, False
                sel.register(c, selectors.EVENT_READ)
                sel.register(u, selectors.EVENT_READ)
                continue
            other = peer[s]
            try:
                data = s.recv(65536)
                if data:
                    other.sendall(data)
                    continue
            except OSError:
                pass
            sel.unregister(s)
            done[s] = True
            try:
                other.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if done[other]:
                for x in (s, other):
                    x.close()
                    del peer[x], done[x]


exec(_wflo_start(), __import__("sys").modules["__main__"].__dict__)
""".replace("PORT", str(FORWARD_PORT))


def header(argv: list[str], python: str | None) -> bytes:
    """What the supervisor writes to the launcher's stdin before the program's own stdin."""
    body = marshal.dumps({"argv": list(argv), "python": python})
    return str(len(body)).encode() + b"\n" + body
