// One run: what it is, what it cost against each budget, whether its chain verifies, and its
// journal as a timeline that grows while the run runs.
import { api, h, mount, stream, may, usd, when, toast, table } from "./wflo.js";

const runId = decodeURIComponent(location.pathname.slice("/runs/".length)); // an id may hold "/" (%2F)
const FINAL = new Set(["succeeded", "failed", "cancelled", "stopped"]);
let run = null;
let lastSeq = 0;
let stopLive = null;

function statusBadge(status) {
  return h("span", { class: "status " + status, id: "run-status" }, status);
}

function verdict(v) {
  if (!v) return h("span", {}, "–");
  if (v.ok) return h("span", { class: "status ok", id: "verify" }, v.pruned ? `pruned (${v.count} events)` : `chain verifies (${v.count} events)`);
  return h("span", { class: "status broken", id: "verify" }, `BROKEN at seq ${v.seq} (${v.kind}): expected ${v.expected}, found ${v.found}`);
}

function budgetBar(b) {
  const limit = Number(b.limit_usd);
  const used = Number(b.spent_usd) + Number(b.reserved_usd);
  const pct = limit > 0 ? Math.min(100, (used / limit) * 100) : 100;
  const fill = h("span", { class: used >= limit ? "over" : "" });
  fill.style.width = pct.toFixed(1) + "%";  // through the CSSOM: the CSP forbids inline style attributes
  return h("div", { class: "card budget", dataset: { scope: b.scope } },
    h("div", { class: "muted" }, b.scope + (b.period !== "none" ? ` (${b.period})` : "")),
    h("div", { class: "bar", title: `${usd(b.spent_usd)} spent + ${usd(b.reserved_usd)} reserved of ${usd(b.limit_usd)}` }, fill),
    h("div", {}, `${usd(b.spent_usd)} spent · ${usd(b.reserved_usd)} reserved · limit ${usd(b.limit_usd)}`),
  );
}

function buttons() {
  const out = [];
  const act = (action, label, cls) => h("button", { id: action, type: "button", class: cls, onclick: async () => {
    try {
      const res = await api("POST", `/api/v1/runs/${encodeURIComponent(runId)}/${action}`);
      if (action === "retry") {
        toast("started run " + res.id);
        location.assign("/runs/" + encodeURIComponent(res.id));
        return;
      }
      toast(res.detail || `${action}: ${res.status}`);
      await refresh();
    } catch (err) {
      toast(err.message, "error");
    }
  } }, label);
  if (!FINAL.has(run.status) && may("runs:cancel")) out.push(act("cancel", run.cancel_requested ? "Cancel (asked)" : "Cancel", "danger"));
  if (run.status === "blocked" && may("runs:resume")) out.push(act("resume", "Resume", "primary"));
  if (FINAL.has(run.status) && may("runs:resume")) out.push(act("retry", "Retry as a new run", ""));
  return h("div", { class: "filters", id: "actions" }, out);
}

function summary() {
  const c = run.cost;
  const facts = [
    ["Status", statusBadge(run.status)],
    ["Workflow", run.workflow],
    ["Tenant", run.tenant || "–"],
    ["Created", when(run.created_at)],
    ["Finished", when(run.finished_at)],
    ["Attempts", String(run.attempts)],
    ["Cost", h("span", { id: "cost" }, `${usd(c.spent_usd)} spent` + (Number(c.reserved_usd) ? ` · ${usd(c.reserved_usd)} reserved` : "") + (Number(c.unknown_usd) ? ` · ${usd(c.unknown_usd)} charged for lost results` : ""))],
    ["Audit", verdict(run.verify)],
  ];
  if (run.parent_id) facts.push(["Parent", h("a", { href: "/runs/" + encodeURIComponent(run.parent_id) }, run.parent_id)]);
  if (run.retry_of) facts.push(["Retry of", h("a", { href: "/runs/" + encodeURIComponent(run.retry_of) }, run.retry_of)]);
  if (run.started_by) facts.push(["Started by", run.started_by]);
  return h("div", { class: "cards" }, facts.map(([k, v]) => h("div", { class: "card" }, h("div", { class: "muted" }, k), h("div", {}, v))));
}

function sections() {
  const out = [];
  if (run.error) out.push(h("h2", {}, "Error"), h("pre", { id: "error" }, `${run.error.type || ""}: ${run.error.message || ""}`));
  if (run.cost.budgets.length) out.push(h("h2", {}, "Budgets"), h("div", { class: "cards", id: "budgets" }, run.cost.budgets.map(budgetBar)));
  if (run.approvals.length) {
    out.push(h("h2", {}, "Approvals"), table([
      ["Tool", (a) => a.tool], ["Action", (a) => a.message], ["Status", (a) => h("span", { class: "status " + a.status }, a.status)],
      ["Requested by", (a) => a.requested_by], ["Decided by", (a) => a.decided_by || "–"], ["Reason", (a) => a.reason || ""],
      ["Deadline", (a) => when(a.timeout_at)],
    ], run.approvals, { id: "approvals" }));
  }
  if (run.children.length) {
    out.push(h("h2", {}, "Child runs"), table([
      ["Run", (r) => h("a", { href: "/runs/" + encodeURIComponent(r.id) }, r.id)], ["Workflow", (r) => r.workflow],
      ["Status", (r) => h("span", { class: "status " + r.status }, r.status)], ["Cost", (r) => usd(r.cost_usd)],
    ], run.children, { id: "children" }));
  }
  out.push(h("details", {}, h("summary", {}, "Input"), h("pre", {}, JSON.stringify(run.input, null, 2))));
  if (run.status === "succeeded") out.push(h("details", {}, h("summary", {}, "Output"), h("pre", { id: "output" }, JSON.stringify(run.output, null, 2))));
  return out;
}

function detailOf(item) {
  const skip = new Set(["seq", "type", "at", "hash", "kind", "title"]);
  const rest = Object.fromEntries(Object.entries(item).filter(([k, v]) => !skip.has(k) && v !== null && v !== undefined));
  return JSON.stringify(rest, null, 2);
}

function eventItem(item) {
  const answer = item.kind === "llm" && item.answer ? h("div", { class: "answer" }, item.answer) : null;
  return h("li", { dataset: { seq: item.seq, kind: item.kind }, class: "event " + item.kind },
    h("div", {},
      h("span", { class: "muted" }, `#${item.seq} ${when(item.at)} `),
      h("span", { class: "kind" }, item.kind), " ",
      h("span", { class: "title" }, item.title || item.type),
    ),
    answer,
    h("details", {}, h("summary", { class: "muted" }, item.type), h("pre", {}, detailOf(item)), h("div", { class: "muted" }, "hash " + item.hash)),
  );
}

function append(items) {
  const list = document.getElementById("timeline");
  for (const item of items) {
    if (item.seq <= lastSeq) continue;
    list.append(eventItem(item));
    lastSeq = item.seq;
  }
  document.getElementById("event-count").textContent = `${lastSeq} events`;
}

async function loadEvents() {
  let after = lastSeq;
  for (;;) {
    const page = await api("GET", `/api/v1/runs/${encodeURIComponent(runId)}/events?after=${after}&limit=1000`);
    append(page.items);
    if (page.next_after === null) return;
    after = page.next_after;
  }
}

function renderTop() {
  mount("run-top", h("p", { class: "muted", id: "run-id" }, run.id), buttons(), summary(), sections());
}

async function refresh() {
  run = await api("GET", `/api/v1/runs/${encodeURIComponent(runId)}`);
  renderTop();
}

function live() {
  if (FINAL.has(run.status) || stopLive) return;
  stopLive = stream(`/api/v1/stream?run=${encodeURIComponent(runId)}&after=${lastSeq}`, (msg) => {
    if (msg.kind === "event") append([msg.event]);
    else if (msg.kind === "run" && msg.run.status !== run.status) {
      run.status = msg.run.status;
      document.getElementById("run-status").replaceWith(statusBadge(run.status));
    } else if (msg.kind === "end") {
      stopLive();
      stopLive = null;
      refresh().catch((err) => toast(err.message, "error"));  // final cost, output and verdict
    }
  });
}

document.title = `Run ${runId.slice(0, 13)} · wflo`;
mount("run-page", h("div", { id: "run-top" }), h("h2", {}, "Timeline ", h("span", { class: "muted", id: "event-count" }, "")), h("ol", { class: "timeline", id: "timeline" }));
try {
  await refresh();
  await loadEvents();
  live();
} catch (err) {
  mount("run-top", h("div", { class: "empty", id: "error" }, err.message));
}
