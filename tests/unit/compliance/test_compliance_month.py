"""Evidence packs from a scripted month (backdated times) on both stores: every section's numbers
equal the script and an independent count over the raw events; the pack verifies offline."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from compliancekit import MONTH, PREVIOUS, scripted_month

from wflo.audit import generate_key
from wflo.audit._checkpoint import load_private_key
from wflo.compliance import build_evidence, build_pack, sections_for, verify_pack
from wflo.store import SYSTEM_CHAIN, Store, open_store


def _sections(evidence: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in evidence["sections"]}


def _raw(store: Store, since: str, until: str) -> list[tuple[str, int, str, str, dict[str, Any]]]:
    """The raw events of a window, read without any of the compliance code."""
    rows = store.read("SELECT chain, seq, type, at, data FROM events WHERE at >= ? AND at < ?", (since, until))
    return [(c, int(s), t, a, json.loads(d)) for c, s, t, a, d in rows]


def test_month_on_both_stores(store_url: str, tmp_path: Path) -> None:
    generate_key(tmp_path / "k.pem")
    key = load_private_key(tmp_path / "k.pem")
    with open_store(store_url) as store:
        expect = scripted_month(store)
        evidence = build_evidence(store, since=MONTH[0], until=MONTH[1], by="user:auditor")
        s = _sections(evidence)
        assert list(s) == sections_for("all")
        # -- the script's own numbers
        rk, ho, mo, co = s["record_keeping"]["figures"], s["human_oversight"]["figures"], s["monitoring"]["figures"], s["cost"]["figures"]  # fmt: skip
        assert rk["history_intact"] and rk["runs_with_events"] == expect["runs"] and rk["gaps"] == expect["gaps"]
        (gaps,) = [t["rows"] for t in s["record_keeping"]["tables"] if t["title"].startswith("Gaps")]
        (gap,) = gaps
        assert gap[2] == pytest.approx(3 * 3600, abs=5) and gap[3] == "m25"
        assert ho["approval_requests"] == expect["requests"]
        assert (ho["approved"], ho["rejected"], ho["edited"], ho["timed_out"]) == (
            expect["approved"], expect["rejected"], expect["edited"], expect["timed_out"])  # fmt: skip
        assert ho["cancellations"] == expect["cancellations"] and ho["pending_at_end"] == 0
        for kind in ("loop_stops", "budget_refusals", "failed_runs", "breaker_openings", "sandbox_kills", "budget_thresholds"):  # fmt: skip
            assert mo[kind] == expect[kind], kind
        assert mo["previous_total"] == expect["previous_loop_stops"] * 2  # each: a loop stop and a stopped run
        trend = {r[0]: r for r in s["monitoring"]["tables"][0]["rows"]}
        assert trend["loop stops"][1:] == [expect["loop_stops"], 2, expect["loop_stops"] - 2]
        assert Decimal(co["total_usd"]) == Decimal(expect["usd"]) and co["paid_calls"] == expect["llm_calls"]
        acc = s["access"]["figures"]
        assert (acc["grants"], acc["removals"]) == (expect["grants"], expect["removals"])
        inv = s["inventory"]
        assert inv["figures"]["workflows"] == 2 and inv["figures"]["models"] == 1 and inv["figures"]["agents"] == 1
        (agent,) = next(t for t in inv["tables"] if t["title"].startswith("Agents"))["rows"]
        assert agent[:3] == ["billing-bot", 15, "billing"]
        (model,) = inv["tables"][1]["rows"]
        assert model[:3] == ["gpt-4o-mini", "openai", expect["llm_calls"] + expect["budget_refusals"]]

        # -- an independent count over the raw events (no compliance code involved)
        raw = _raw(store, *MONTH)
        types = Counter(t for _c, _s, t, _a, _d in raw)
        assert rk["events"] == len(raw) and rk["chains"] == len({c for c, *_ in raw})
        assert dict(sorted(types.items())) == dict(s["record_keeping"]["tables"][0]["rows"])
        per_day = Counter(a[:10] for _c, _s, _t, a, _d in raw)
        assert {r[0]: r[1] for r in s["record_keeping"]["tables"][1]["rows"]} == per_day and len(per_day) == 30
        assert mo["loop_stops"] == types["loop.stopped"] and mo["failed_runs"] == types["run.failed"]
        assert mo["stopped_runs"] == types["run.stopped"] and mo["budget_thresholds"] == types["budget.threshold"]
        assert mo["budget_refusals"] == sum(1 for *_x, t, _a, d in raw if t == "call.failed" and d.get("error", {}).get("code") == "budget_exceeded")  # fmt: skip
        assert mo["breaker_openings"] == sum(1 for *_x, t, _a, d in raw if t == "breaker.transition" and d["to"] == "open")  # fmt: skip
        prev = Counter(t for _c, _s, t, _a, _d in _raw(store, *PREVIOUS))
        assert mo["previous_total"] == prev["loop.stopped"] + prev["run.stopped"]
        system = [(t, d) for c, _s, t, _a, d in raw if c == SYSTEM_CHAIN]
        assert ho["approved"] == sum(1 for t, d in system if t == "approval.decided" and d["status"] == "approved")
        assert ho["rejected"] == sum(1 for t, d in system if t == "approval.decided" and d["status"] == "rejected")
        assert ho["timed_out"] == sum(1 for t, _d in system if t == "approval.expired")
        requested = {d["approval_id"]: d["action_hash"] for _c, _s, t, _a, d in raw if t == "approval.requested"}
        assert ho["edited"] == sum(
            1 for t, d in system if t == "approval.decided" and d["action_hash"] != requested[d["approval_id"]]
        )
        assert ho["approval_requests"] == types["approval.requested"] and ho["cancellations"] == types["run.cancelled"]
        assert acc["grants"] == sum(1 for t, _d in system if t == "principal.granted")
        assert acc["removals"] == sum(1 for t, _d in system if t == "principal.revoked")
        spent = sum(Decimal(d["cost_usd"]) for *_x, t, _a, d in raw if t == "call.completed" and "cost_usd" in d)
        assert Decimal(co["total_usd"]) == spent
        workflows = {w for (w,) in store.read("SELECT DISTINCT workflow FROM runs WHERE id IN (SELECT chain FROM events WHERE at >= ? AND at < ?)", MONTH)}  # fmt: skip
        assert inv["figures"]["workflows"] == len(workflows)
        cited = {(c, s_) for c, s_ in evidence["cited"]}
        assert cited >= {
            (c, s_) for c, s_, t, _a, _d in raw if t in ("loop.stopped", "approval.requested", "run.failed")
        }

        # -- the pack: written, signed, verified offline, on the record
        manifest = build_pack(store, tmp_path / "pack", since=MONTH[0], until=MONTH[1], private_key=key, fmt="html",
                              by="user:auditor")  # fmt: skip
        result = verify_pack(tmp_path / "pack", key.public_key())
        assert result.ok, result.problem
        assert result.records == manifest["records"] == len(evidence["cited"])
        packs = [e for e in store.events(SYSTEM_CHAIN) if e.type == "compliance.pack"]
        assert packs and packs[-1].data["since"] == MONTH[0] and not packs[-1].data["scheduled"]
        page = (tmp_path / "pack" / "report.html").read_text()
        assert "What this period shows" in page and "m25" in page and "<script" not in page


def test_framework_packs_hold_only_their_sections(sqlite_url: str) -> None:
    with open_store(sqlite_url) as store:
        scripted_month(store)
        ai_act = build_evidence(store, since=MONTH[0], until=MONTH[1], framework="eu-ai-act")
        assert [s["key"] for s in ai_act["sections"]] == [
            "record_keeping",
            "human_oversight",
            "inventory",
            "monitoring",
        ]
        assert all(c.startswith("EU AI Act") for s in ai_act["sections"] for c in s["controls"])
        soc2 = _sections(build_evidence(store, since=MONTH[0], until=MONTH[1], framework="soc2"))
        assert soc2["access"]["controls"][:3] == ["SOC 2 CC6.1 (logical access)", "SOC 2 CC6.2 (granting access)",
                                                   "SOC 2 CC6.3 (changing and removing access)"]  # fmt: skip
        assert not any("does not yet sign people in" in n for n in soc2["access"]["notes"])
        iso = _sections(build_evidence(store, since=MONTH[0], until=MONTH[1], framework="iso42001"))
        assert "ISO/IEC 42001 A.6.2.8 (AI system recording of event logs)" in iso["record_keeping"]["controls"]
        for section in iso.values():
            assert section["query"] and section["summary"]


def test_a_tampered_history_gives_a_pack_that_says_so(store_url: str, tmp_path: Path) -> None:
    """A DBA edits a recorded event: the pack is still made (and intact as a pack), says BROKEN,
    names the chain, and carries no checkpoint (nothing broken is ever signed as a checkpoint)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "audit"))
    from auditkit import admin

    generate_key(tmp_path / "k.pem")
    key = load_private_key(tmp_path / "k.pem")
    with open_store(store_url) as store:
        scripted_month(store)
        with admin(store_url) as db:
            db.run("UPDATE events SET data = ? WHERE chain = 'm07' AND seq = 3", ('{"call":"1","kind":"llm"}',))
            # and a cited record: the loop stop of day 5 now claims another detector
            db.run("UPDATE events SET data = replace(data, 'max_repeats', 'max_steps') WHERE chain = 'm05' AND type = 'loop.stopped'")  # fmt: skip
        manifest = build_pack(store, tmp_path / "pack", since=MONTH[0], until=MONTH[1], private_key=key, fmt="html")
    assert "checkpoint.json" not in [f["name"] for f in manifest["files"]]
    assert verify_pack(tmp_path / "pack").ok  # the pack is what was found; what was found is a break
    evidence = json.loads((tmp_path / "pack" / "evidence.json").read_text())
    (rk,) = [s for s in evidence["sections"] if s["key"] == "record_keeping"]
    assert rk["figures"]["history_intact"] is False and rk["figures"]["broken_chains"] == 2
    assert [r[0] for r in next(t for t in rk["tables"] if t["title"] == "Broken links")["rows"]] == ["m05", "m07"]
    records = [json.loads(line) for line in (tmp_path / "pack" / "records.jsonl").read_text().splitlines()]
    marked = [(r["chain"], r["type"]) for r in records if r.get("hash_mismatch_in_store")]
    assert marked == [("m05", "loop.stopped")]
    page = (tmp_path / "pack" / "report.html").read_text()
    overview = page.split('<section id="record_keeping">')[0]
    assert "BROKEN" in overview
    assert "DOES NOT HASH" in page.split('id="appendix"')[1]


def test_access_lists_sign_ins_and_tokens(sqlite_url: str) -> None:
    """The Access section's note said "wflo does not yet sign people in (sign-ins, failed sign-ins
    and API tokens arrive with the identity issue)" while the server signs people in and its
    sign-ins sat, unexplained, in a table titled "Grants and removals" with no principal."""
    from wflo import _config
    from wflo.auth import access, tokens
    from wflo.errors import AuthenticationError
    from wflo.store import NewEvent, now_iso

    _config.configure(database=sqlite_url)
    store = _config.get_store()
    start = now_iso()
    who = access().local("user:root")
    access().bootstrap("user:root", who=who)
    tokens().create("ci", "operator", who=access().local("user:root"))
    with pytest.raises(AuthenticationError):
        tokens().authenticate("wflo_00000000_not-a-token")
    store.append_system([NewEvent("auth.login", {"by": "user:ann@acme.com", "via": "panel", "roles": ["approver@*"]})])
    access_section = _sections(build_evidence(store, since=start, until=now_iso(), framework="soc2"))["access"]
    figures = access_section["figures"]
    assert (figures["sign_ins"], figures["refused_sign_ins_and_tokens"]) == (1, 1)
    (changes,) = [t for t in access_section["tables"] if "sign-ins" in t["title"]]
    rows = {r[1]: r for r in changes["rows"]}
    assert rows["auth.login"][2:4] == ["user:ann@acme.com", "approver@*"]
    assert rows["token.created"][2:4] == ["service:ci", "operator"]
    assert "sign-ins through the server" in access_section["notes"][0]
    assert "does not yet sign people in" not in access_section["notes"][0]
