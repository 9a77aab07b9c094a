"""The server in a background thread of this process: for examples, tests and notebooks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def serve_in_thread(app: Any = None, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` (default: ``create_app()`` on the configured store) with uvicorn in a thread;
    yields its base URL once it accepts connections, and stops it on leaving the block.

    ``port=0`` picks a free port. ``wflo server`` is the way to run it for real."""
    import uvicorn

    from ._app import create_app

    if not port:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app or create_app(), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="wflo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the wflo server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
