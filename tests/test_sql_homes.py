"""Where the SQL lives: a domain's tables (their DDL and every query on them) are in one module.

The store owns runs, events, chain heads and the order of the migrations; each domain listed in
``SQL_HOMES`` keeps its tables in the one module named there, and no other module of its package
holds SQL text. Adding a domain (the ledger in ``wflo.cost._tables``, the audit tables, the
LangGraph checkpointer) is one row.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# (package, the one module of it allowed to hold SQL)
SQL_HOMES: list[tuple[str, str]] = [
    ("wflo.approvals", "wflo.approvals._tables"),
    ("wflo.audit", "wflo.audit._tables"),
    ("wflo.cost", "wflo.cost._tables"),
    ("wflo.guards", "wflo.guards._tables"),
    ("wflo.integrations", "wflo.integrations._checkpoint_tables"),
]

_SQL = re.compile(
    r"\bSELECT\b.+\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bCREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX)\b"
    r"|\bALTER\s+TABLE\b|\bDROP\s+(?:TABLE|INDEX)\b",
    re.DOTALL,
)


def sql_in(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of each string in ``source`` that holds SQL (docstrings and comments aside)."""
    tree = ast.parse(source)
    skip: set[int] = set()  # docstrings, and the literal parts of f-strings (read with their f-string)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # an f-string: its literal parts, with {…} as a blank
            text = "".join(v.value if isinstance(v, ast.Constant) else " x " for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        if _SQL.search(text):
            found.append((node.lineno, text.strip().splitlines()[0][:80]))
    return found


def test_the_detector_finds_sql() -> None:
    source = '''
"""A docstring may say SELECT x FROM y."""
# a comment may too: DELETE FROM t
A = "SELECT id FROM approvals WHERE id = ?"
B = f"UPDATE approvals SET status = ? WHERE id IN ({marks})"
C = ("INSERT INTO rate_buckets (key) "
     "VALUES (?)")
D = "CREATE INDEX x ON t (a)"
E = "select the approvers from the list"
'''
    assert [line for line, _ in sql_in(source)] == [4, 5, 6, 8]


@pytest.mark.parametrize(("package", "home"), SQL_HOMES, ids=[p for p, _ in SQL_HOMES])
def test_sql_lives_in_the_domains_tables_module(package: str, home: str) -> None:
    folder = SRC.joinpath(*package.split("."))
    home_file = SRC.joinpath(*home.split(".")).with_suffix(".py")
    assert home_file.is_file(), home
    assert sql_in(home_file.read_text()), f"{home} holds no SQL: is it still the home of {package}'s tables?"
    strays = {
        str(path.relative_to(SRC)): found
        for path in sorted(folder.rglob("*.py"))
        if path != home_file and (found := sql_in(path.read_text()))
    }
    assert not strays, f"SQL outside {home} (move it there as a named query): {strays}"
