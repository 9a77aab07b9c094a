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
    ("wflo.engine", "wflo.engine._tables"),
    ("wflo.guards", "wflo.guards._tables"),
    ("wflo.integrations", "wflo.integrations._checkpoint_tables"),
]

_SQL = re.compile(
    r"\bSELECT\b.+\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bCREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX)\b"
    r"|\bALTER\s+TABLE\b|\bDROP\s+(?:TABLE|INDEX)\b",
    re.DOTALL,
)


def sql_strings(source: str, *, skip_query_entries: bool = False) -> list[tuple[int, str]]:
    """``(line, text)`` of each string in ``source`` that holds SQL: docstrings are prose, an
    f-string is read whole (its literal parts, with ``{…}`` as a blank), and with
    ``skip_query_entries`` so are the values of ``"query"`` keys (a report section's prose)."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        if skip_query_entries and isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "query":
                    skip.update(id(n) for n in ast.walk(value))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else " x " for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if _SQL.search(text):
            found.append((node.lineno, text))
    return found


def sql_in(source: str) -> list[tuple[int, str]]:
    """``(line, first line of the text)`` of each string in ``source`` that holds SQL."""
    return [(line, text.strip().splitlines()[0][:80]) for line, text in sql_strings(source)]


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


# --------------------------------------------------------------------------- no reading across domains
# Packages whose SQL may name any domain's tables: wflo.store keeps the released migrations
# (m004's prune function deletes the audit's payloads), and those are frozen text.
_MAY_NAME_ANY = ("wflo.store",)


def domain_tables() -> dict[str, str]:
    """Each domain table (created in a ``SQL_HOMES`` module) and the package that owns it."""
    owned = {}
    for package, home in SQL_HOMES:
        text = SRC.joinpath(*home.split(".")).with_suffix(".py").read_text()
        for table in re.findall(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", text):
            owned[table] = package
    return owned


def foreign_tables(source: str, module: str, owned: dict[str, str]) -> list[tuple[int, str]]:
    """``(line, table)`` for each SQL string in ``source`` (module ``module``) naming a table owned
    by another package. The ``"query"`` entries of a report's sections are prose for the reader
    (what a figure was counted from), not SQL that runs, so they are not read."""
    found = []
    for line, text in sql_strings(source, skip_query_entries=True):
        for table, package in owned.items():
            mine = module == package or module.startswith(package + ".")
            if not mine and re.search(rf"\b{table}\b", text):
                found.append((line, table))
    return sorted(found)


def test_the_cross_domain_check_finds_a_foreign_table() -> None:
    owned = {"budget_usage": "wflo.cost", "approvals": "wflo.approvals"}
    source = '''
"""The docstring may say SELECT spent_usd FROM budget_usage."""
A = "SELECT scope, alerted FROM budget_usage WHERE scope = ?"
B = f"UPDATE events SET data = ? WHERE chain IN (SELECT run_id FROM approvals LIMIT {n})"
C = "SELECT id FROM runs WHERE id = ?"
D = {"query": ["SELECT scope FROM budget_usage (current)"], "rows": []}
E = "the approvals inbox, SELECT-ed from nowhere"
'''
    assert foreign_tables(source, "wflo.server._decisions", owned) == [(3, "budget_usage"), (4, "approvals")]
    # The owner itself may, and so may its submodules.
    assert foreign_tables(source, "wflo.cost._tables", owned) == [(4, "approvals")]
    assert foreign_tables(source, "wflo.approvals._tables", owned) == [(3, "budget_usage")]


def test_the_domain_tables_are_known() -> None:
    owned = domain_tables()
    expected = {"approvals": "wflo.approvals", "budget_usage": "wflo.cost", "ledger_spend": "wflo.cost",
                "budget_unknown": "wflo.cost", "rate_buckets": "wflo.guards", "payloads": "wflo.audit"}  # fmt: skip
    assert expected.items() <= owned.items(), owned


def test_no_package_reads_another_domains_tables_with_its_own_sql() -> None:
    """The server, the CLI, compliance, the demo (and every other package) reach a domain's tables
    through that domain's public functions, whose SQL lives in its ``_tables`` module."""
    owned = domain_tables()
    strays = {}
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        if module.startswith(_MAY_NAME_ANY):
            continue
        if found := foreign_tables(path.read_text(), module, owned):
            strays[str(path.relative_to(SRC))] = found
    assert not strays, f"SQL naming another domain's tables (call a public function of that domain): {strays}"
