// Runs: a filtered list that updates live, filters kept in the URL, saved views (in this
// browser), and cancel/resume on selected runs or on everything a filter matches.
import { api, h, mount, params, setParams, query, stream, may, usd, when, toast } from "./wflo.js";

const FILTERS = [
  ["workflow", "Workflow", "text", "name, or a,b"],
  ["status", "Status", "text", "failed,running"],
  ["tenant", "Tenant", "text", ""],
  ["since", "Since", "text", "2h, 7d, 2026-11-01"],
  ["until", "Until", "text", ""],
  ["min_cost_usd", "Min cost $", "text", "0.10"],
  ["q", "Text", "search", "id, workflow or error"],
];
const VIEWS_KEY = "wflo.runs.views";
const FINAL = new Set(["succeeded", "failed", "cancelled", "stopped"]);

let filter = {};
let cursor = null;
let rows = [];
const selected = new Set();
let stopLive = null;

/** A tenant-scoped person lists their tenant (a list of every tenant needs a global grant). */
function defaultTenant() {
  const grants = (document.body.dataset.grants || "").split(" ").filter(Boolean).map((g) => g.split("@"));
  if (grants.some(([, scope]) => scope === "*")) return "";
  const t = grants.map(([, scope]) => scope).find((s) => s && s.startsWith("tenant:"));
  return t ? t.slice(7).split("/")[0] : "";
}

function readForm() {
  const out = {};
  for (const [key] of FILTERS) {
    const v = document.getElementById("f-" + key).value.trim();
    if (v) out[key] = v;
  }
  return out;
}

function views() {
  try { return JSON.parse(localStorage.getItem(VIEWS_KEY) || "{}"); } catch { return {}; }
}

function saveViews(all) {
  localStorage.setItem(VIEWS_KEY, JSON.stringify(all));
}

function viewsBar() {
  const all = views();
  const pick = h("select", { id: "views", "aria-label": "Saved views", onchange: (e) => {
    const v = all[e.target.value];
    if (v) { filter = { ...v }; fillForm(); apply(); }
  } }, h("option", { value: "" }, "Saved views…"), Object.keys(all).sort().map((n) => h("option", { value: n }, n)));
  const name = h("input", { id: "view-name", placeholder: "view name", size: 12 });
  const save = h("button", { id: "save-view", type: "button", onclick: () => {
    const n = name.value.trim();
    if (!n) return toast("name the view first", "error");
    saveViews({ ...views(), [n]: readForm() });
    toast(`view "${n}" saved`);
    mount("views-bar", viewsBar());
  } }, "Save view");
  const del = h("button", { id: "delete-view", type: "button", onclick: () => {
    const n = pick.value;
    if (!n) return;
    const rest = views();
    delete rest[n];
    saveViews(rest);
    mount("views-bar", viewsBar());
  } }, "Delete view");
  return h("span", { class: "filters" }, pick, name, save, del);
}

function fillForm() {
  for (const [key] of FILTERS) document.getElementById("f-" + key).value = filter[key] || "";
}

function statusCell(r) {
  return h("span", { class: "status " + r.status }, r.status + (r.cancel_requested && !FINAL.has(r.status) ? " (cancelling)" : ""));
}

function row(r) {
  const box = h("input", { type: "checkbox", "aria-label": "select " + r.id, onchange: (e) => {
    e.target.checked ? selected.add(r.id) : selected.delete(r.id);
    updateActions();
  } });
  box.checked = selected.has(r.id);
  return h("tr", { dataset: { id: r.id } },
    h("td", {}, box),
    h("td", {}, h("a", { href: "/runs/" + encodeURIComponent(r.id), class: "run-link" }, r.id)),
    h("td", {}, r.workflow),
    h("td", { class: "status-cell" }, statusCell(r)),
    h("td", {}, r.tenant || "–"),
    h("td", {}, when(r.created_at)),
    h("td", { class: "events-cell" }, String(r.events)),
    h("td", {}, usd(r.cost_usd)),
    h("td", { class: "muted" }, r.error ? (r.error.message || r.error.type || "").slice(0, 120) : ""),
  );
}

function render() {
  const body = h("tbody", { id: "runs-body" }, rows.map(row));
  const head = ["", "Run", "Workflow", "Status", "Tenant", "Created", "Events", "Cost", "Error"];
  mount("runs-list",
    rows.length
      ? h("table", { id: "runs-table" }, h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))), body)
      : h("div", { class: "empty", id: "no-runs" }, cursor ? "none found yet: a text or cost search reads 5,000 runs a page" : "no runs match"),
    cursor ? h("p", {}, h("button", { id: "more", type: "button", onclick: loadMore }, "Load more")) : null,
  );
}

async function load() {
  const page = await api("GET", "/api/v1/runs" + query({ ...filter, limit: 50 }));
  rows = page.items;
  cursor = page.next_cursor;
  selected.clear();
  render();
  updateActions();
}

async function loadMore() {
  const page = await api("GET", "/api/v1/runs" + query({ ...filter, limit: 50, cursor }));
  rows = rows.concat(page.items);
  cursor = page.next_cursor;
  render();
}

function apply() {
  setParams(filter);
  load().catch((err) => mount("runs-list", h("div", { class: "empty", id: "list-error" }, err.message)));
  live();
}

// ------------------------------------------------------------------ actions
function updateActions() {
  for (const id of ["cancel-selected", "resume-selected"]) {
    const b = document.getElementById(id);
    if (b) b.disabled = selected.size === 0;
  }
}

async function each(action) {
  const ids = [...selected];
  let ok = 0;
  const failed = [];
  for (const id of ids) {
    try {
      const out = await api("POST", `/api/v1/runs/${encodeURIComponent(id)}/${action}`);
      if (action !== "resume" || out.resumed) ok += 1;
    } catch (err) {
      failed.push(`${id.slice(0, 12)}: ${err.message}`);
    }
  }
  toast(`${action}: ${ok} of ${ids.length} run(s)` + (failed.length ? ` — ${failed.join("; ")}` : ""), failed.length ? "error" : "info");
  await load();
}

function bulkButton(action) {
  let armed = false;
  const b = h("button", { id: `${action}-matching`, type: "button", class: action === "cancel" ? "danger" : "" }, `${action} all matching…`);
  b.addEventListener("click", async () => {
    if (!armed) {  // a second click confirms: the filter may match many runs
      armed = true;
      b.textContent = `confirm: ${action} every run matching this filter`;
      setTimeout(() => { armed = false; b.textContent = `${action} all matching…`; }, 5000);
      return;
    }
    armed = false;
    b.textContent = `${action} all matching…`;
    try {
      const out = await api("POST", "/api/v1/runs/bulk", { action, filter });
      const skipped = Object.entries(out.skipped).map(([k, v]) => `${v} ${k.replace("_", " ")}`).join(", ");
      toast(`${action}: ${out.acted} of ${out.matched} matching run(s)` + (skipped ? ` (skipped: ${skipped})` : "") + (out.more ? "; more remain, run it again" : ""));
      await load();
    } catch (err) {
      toast(err.message, "error");
    }
  });
  return b;
}

function actionsBar() {
  const out = [];
  if (may("runs:cancel")) out.push(h("button", { id: "cancel-selected", type: "button", class: "danger", disabled: true, onclick: () => each("cancel") }, "Cancel selected"), bulkButton("cancel"));
  if (may("runs:resume")) out.push(h("button", { id: "resume-selected", type: "button", disabled: true, onclick: () => each("resume") }, "Resume selected"), bulkButton("resume"));
  return out.length ? h("div", { class: "filters", id: "bulk" }, out) : null;
}

// ------------------------------------------------------------------ live
function matches(r) {
  const has = (key, value) => !filter[key] || filter[key].split(",").map((s) => s.trim()).includes(value);
  return has("workflow", r.workflow) && has("status", r.status) && (!filter.tenant || filter.tenant === r.tenant)
    && !filter.q && !filter.min_cost_usd && !filter.until;
}

function onLive(msg) {
  if (msg.kind !== "run") return;
  const r = msg.run;
  const i = rows.findIndex((x) => x.id === r.id);
  if (i >= 0) {
    rows[i] = { ...rows[i], ...r, cost_usd: rows[i].cost_usd };
    const tr = document.querySelector(`#runs-body tr[data-id="${CSS.escape(r.id)}"]`);
    if (tr) {
      tr.querySelector(".status-cell").replaceChildren(statusCell(rows[i]));
      tr.querySelector(".events-cell").textContent = String(r.events);
    }
  } else if (matches(r) && (!rows.length || r.created_at > rows[0].created_at)) {
    // Only a run newer than the list's newest is new: an older one not listed is on a later page
    // (the stream catching up after a burst put 1,559 such runs at the top of a page of 50).
    rows.unshift(r);
    renderSoon();
  }
}

// A burst of new runs (a thousand enqueued at once, or the stream catching up) came as a
// thousand messages, and rendering the whole table on each froze the page; one render a frame.
let renderQueued = false;
function renderSoon() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function live() {
  if (stopLive) stopLive();
  stopLive = stream("/api/v1/stream" + query({ tenant: filter.tenant }), onLive);
}

// ------------------------------------------------------------------ page
filter = params();
if (!filter.tenant && defaultTenant()) filter.tenant = defaultTenant();
const form = h("form", { class: "filters", id: "filters", onsubmit: (e) => { e.preventDefault(); filter = readForm(); apply(); } },
  FILTERS.map(([key, label, type, hint]) => h("label", {}, label, h("input", { id: "f-" + key, name: key, type, placeholder: hint, size: key === "q" ? 22 : 12 }))),
  h("button", { id: "apply", type: "submit", class: "primary" }, "Apply"),
  h("button", { id: "clear", type: "button", onclick: () => { filter = {}; const t = defaultTenant(); if (t) filter.tenant = t; fillForm(); apply(); } }, "Clear"),
);
mount("runs-page", form, h("div", { id: "views-bar" }), actionsBar(), h("div", { id: "runs-list" }));
mount("views-bar", viewsBar());
fillForm();
apply();
