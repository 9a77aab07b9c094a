// Audit: verify the hash chains (all, or those with events since a date) and the spend book, the signed
// checkpoints on record, an export download (events + manifest), and the compliance report.
import { api, h, mount, params, setParams, query, when, toast, table, download } from "./wflo.js";

const root = document.getElementById("audit");
const state = { since: params().since || "", report: params().report || "30d" };
const autoVerify = params().verify === "1";  // read now: the panels below rewrite the URL

const verdictBox = h("div", { id: "verdict" },
  h("p", { class: "muted" }, "Not verified yet: verification recomputes every link of the chosen chains, checks the spend book against them (and is recorded)."));

async function verify(since) {
  mount(verdictBox, h("p", { class: "muted" }, "verifying…"));
  let v;
  try {
    v = await api("POST", "/api/v1/audit/verify", since ? { since } : {});
  } catch (err) {
    mount(verdictBox, h("p", { class: "empty" }, "unavailable: " + err.message));
    return;
  }
  const head = h("div", { class: "card verdict " + (v.ok ? "ok" : "broken") },
    h("div", { class: "value", id: "verdict-text" }, v.ok ? "Intact" : "BROKEN"),
    h("div", {}, `${v.chains} chains, ${v.events.toLocaleString()} events verified` + (v.pruned ? `, ${v.pruned} pruned on record` : "") +
      (v.since ? ` (chains with events since ${when(v.since)})` : " (every chain)") + `, at ${when(v.at)}`));
  const broken = v.broken.length
    ? h("div", {}, h("h3", {}, "Broken links"), table([
      ["Chain", (r) => h("code", {}, r.chain)],
      ["First broken seq", (r) => r.seq],
      ["Kind", (r) => h("span", { class: "status broken" }, r.kind)],
      ["Expected", (r) => h("code", {}, String(r.expected || "").slice(0, 24))],
      ["Found", (r) => h("code", {}, String(r.found || "").slice(0, 24))],
    ], v.broken.map((r) => ({ ...r, id: r.chain })), { id: "broken-table" }))
    : null;
  const b = v.spend_book;  // the costs' book recomputed from the journals (null: not asked)
  const book = b
    ? h("div", {}, h("p", { id: "book-verdict", class: b.ok ? "muted" : "status broken" }, b.verdict),
      b.findings.length ? table([
        ["Run", (f) => h("code", {}, f.run_id)],
        ["Model", (f) => f.model],
        ["Kind", (f) => h("span", { class: "status broken" }, f.kind)],
        ["Finding", (f) => f.describe],
      ], b.findings.map((f) => ({ ...f, id: f.run_id + "/" + f.model })), { id: "book-table" }) : null)
    : null;
  const all = h("details", {}, h("summary", {}, "Every chain's verdict"), table([
    ["Chain", (r) => h("code", {}, r.chain)],
    ["Events", (r) => r.count],
    ["Verdict", (r) => h("span", { class: "status " + (r.ok ? "ok" : "broken") }, r.ok ? (r.pruned ? "pruned" : "ok") : "broken")],
    ["Head", (r) => h("code", {}, r.head.slice(0, 16))],
  ], v.reports.map((r) => ({ ...r, id: r.chain })), { id: "chain-table" }));
  mount(verdictBox, head, broken, book, all);
}

function verifyPanel() {
  const since = h("input", { id: "verify-since", value: state.since, size: 12, placeholder: "all", title: "YYYY-MM-DD, an ISO time, or an age (7d)" });
  return h("section", { id: "verify" }, h("h2", {}, "Chain verification"),
    h("div", { class: "filters" },
      h("label", {}, "Since", since),
      h("button", { id: "verify-btn", class: "primary", onclick: () => {
        state.since = since.value.trim();
        setParams(state);
        verify(state.since);
      } }, "Verify"),
      h("button", { id: "verify-all", onclick: () => { since.value = ""; state.since = ""; setParams(state); verify(""); } }, "Verify all")),
    verdictBox);
}

async function checkpoints() {
  let items;
  try {
    items = await api("GET", "/api/v1/audit/checkpoints");
  } catch (err) {
    return h("p", { class: "empty" }, "unavailable: " + err.message);
  }
  if (!items.length) {
    return h("p", { class: "muted", id: "no-checkpoints" },
      "No signed checkpoint yet. Make one with ", h("code", {}, "wflo audit checkpoint --key KEY --out FILE"),
      " and keep the file away from the database host.");
  }
  return table([
    ["Signed at", (c) => when(c.at)],
    ["By", (c) => c.by],
    ["Chains", (c) => c.chains],
    ["Events", (c) => c.events],
    ["Merkle root", (c) => h("code", {}, c.merkle_root.slice(0, 24) + "…")],
    ["Public key", (c) => h("code", {}, c.public_key.slice(0, 16) + "…")],
  ], items.map((c) => ({ ...c, id: c.seq })), { id: "checkpoint-table" });
}

function exportPanel() {
  const since = h("input", { id: "export-since", size: 12, placeholder: "all" });
  const run = h("input", { id: "export-run", size: 16, placeholder: "every run" });
  const fmt = h("select", { id: "export-format" }, ["jsonl", "csv"].map((f) => h("option", { value: f }, f)));
  const btn = h("button", { id: "export-btn", class: "primary", onclick: async () => {
    btn.disabled = true;
    try {
      const name = await download("POST", "/api/v1/audit/export", { since: since.value.trim() || null, run: run.value.trim() || null, format: fmt.value });
      toast("downloaded " + name);
    } catch (err) {
      toast(err.message, "error");
    } finally {
      btn.disabled = false;
    }
  } }, "Download export");
  return h("section", { id: "export" }, h("h2", {}, "Export"),
    h("p", { class: "muted" }, "The events with a manifest.json that pins each file's SHA-256 and each chain's head; recorded as audit.exported."),
    h("div", { class: "filters" }, h("label", {}, "Since", since), h("label", {}, "Run", run), h("label", {}, "Format", fmt), btn));
}

function reportPanel() {
  const since = h("input", { id: "report-since", value: state.report, size: 12 });
  const link = h("a", { id: "report-link", class: "button", target: "_blank", rel: "noopener" }, "Open the report");
  const update = () => {
    link.href = "/api/v1/audit/report" + query({ since: since.value.trim() || "30d" });
    state.report = since.value.trim();
    setParams(state);
  };
  since.addEventListener("input", update);
  update();
  return h("section", { id: "report" }, h("h2", {}, "Compliance report"),
    h("p", { class: "muted" }, "Runs, spend against budgets, approvals, loop stops, refusals, configuration changes and the verification, as one page."),
    h("div", { class: "filters" }, h("label", {}, "Since", since), link));
}

const cps = h("section", { id: "checkpoints" }, h("h2", {}, "Signed checkpoints"), h("p", { class: "muted" }, "loading…"));
mount(root, verifyPanel(), cps, exportPanel(), reportPanel());
if (autoVerify) verify(state.since);
checkpoints().then((node) => mount(cps, h("h2", {}, "Signed checkpoints"), node));
