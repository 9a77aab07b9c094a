"""The secure tools refusing what an agent must not do: SQL writes, internal URLs, path escapes.

Runs offline in about a second: python examples/secure_tools.py
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from typing import Any

try:
    import sqlglot  # noqa: F401
except ImportError:
    print("examples/secure_tools.py needs the SQL parser sqlglot: pip install 'wflo[tools]'")
    sys.exit(0)

from wflo.tools import ToolRefused, files, http_get, sql_query


def attempt(label: str, call: Callable[[], Any]) -> None:
    try:
        result = call()
    except ToolRefused as refused:
        print(f"  refused  {label:<38} {refused.reason}")
    else:
        print(f"  ok       {label:<38} {str(result)[:70]}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wflo-tools-") as work:
        print("sql_query (read-only SQLite):")
        path = os.path.join(work, "shop.db")
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE orders (id INTEGER, total REAL)")
            db.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 9.5) for i in range(1, 21)])
        db.close()
        query = sql_query(f"sqlite:///{path}", max_rows=5, timeout="300ms")
        attempt("SELECT … (5 of 20 rows)", lambda: query("SELECT id, total FROM orders ORDER BY id"))
        attempt("DELETE FROM orders", lambda: query("DELETE FROM orders"))
        attempt("SELECT 1; DROP TABLE orders", lambda: query("SELECT 1; DROP TABLE orders"))
        attempt("comment trick", lambda: query("SELECT 1 --\n; DELETE FROM orders"))
        attempt("PRAGMA writable_schema", lambda: query("PRAGMA writable_schema = 1"))
        attempt("endless recursive CTE", lambda: query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        ))  # fmt: skip

        print("http_get (allow=['example.com', '*.python.org']):")
        fetch = http_get(allow=["example.com", "*.python.org", "localhost"], timeout="2s")
        for url in ["http://169.254.169.254/latest/meta-data/", "http://2130706433/", "http://[::ffff:127.0.0.1]/",
                    "http://localhost:80/", "http://evil.example.net/", "file:///etc/passwd"]:  # fmt: skip
            attempt(url, lambda url=url: fetch(url))

        print("files (root=workspace, writable=True):")
        root = os.path.join(work, "workspace")
        os.makedirs(root)
        os.symlink("/etc", os.path.join(root, "etc"))
        tools = {t.name: t for t in files(root, writable=True, approval=None, max_bytes="4KiB")}
        attempt("write_file notes.txt", lambda: tools["write_file"]("notes.txt", "hello"))
        attempt("read_file notes.txt", lambda: tools["read_file"]("notes.txt"))
        attempt("read_file ../../etc/passwd", lambda: tools["read_file"]("../../etc/passwd"))
        attempt("read_file /etc/passwd", lambda: tools["read_file"]("/etc/passwd"))
        attempt("read_file etc/passwd (symlinked dir)", lambda: tools["read_file"]("etc/passwd"))
        attempt("write_file 8 KiB", lambda: tools["write_file"]("big.txt", "x" * 8192))


if __name__ == "__main__":
    main()
