// Approvals: what is waiting for me, the exact action, and the decision (approve, reject with a
// reason, or approve with edited arguments). Every decision sends the action hash the person
// was shown (If-Match), so a request that changed meanwhile is refused, not decided blind.
import { api, h, mount, params, setParams, query, may, when, toast, table, ApiError } from "./wflo.js";

// A person whose grants are all in one tenant sees that tenant by default (the API refuses
// the every-tenant view to them).
function defaultTenant() {
  const scopes = (document.body.dataset.grants || "").split(" ").filter(Boolean).map((g) => g.split("@")[1] || "");
  if (scopes.includes("*")) return "";
  const t = scopes.find((s) => s.startsWith("tenant:"));
  return t ? t.slice(7).split("/")[0] : "";
}

const root = document.getElementById("approvals");
const state = {
  status: params().status || "pending",
  mine: params().mine !== undefined ? params().mine === "1" : may("approvals:decide"),
  tenant: params().tenant ?? defaultTenant(),
  id: params().id || "",
};

function sync() {
  setParams({ status: state.status, mine: state.mine ? "1" : "0", tenant: state.tenant, id: state.id });
}

function filters() {
  const status = h("select", { id: "f-status" },
    ["pending", "approved", "rejected", "expired", "superseded", "cancelled", "all"].map((s) =>
      h("option", { value: s, selected: s === state.status }, s)));
  const mine = h("input", { type: "checkbox", id: "f-mine", checked: state.mine });
  const tenant = h("input", { id: "f-tenant", placeholder: "any", value: state.tenant, size: 12 });
  const apply = () => {
    Object.assign(state, { status: status.value, mine: mine.checked, tenant: tenant.value.trim() });
    sync();
    load();
  };
  status.addEventListener("change", apply);
  mine.addEventListener("change", apply);
  tenant.addEventListener("change", apply);
  return h("div", { class: "filters" },
    h("label", {}, "Status", status),
    h("label", {}, "Tenant", tenant),
    h("label", { class: "inline" }, h("span", {}, mine, " only requests I may decide")));
}

function left(iso) {
  if (!iso) return "no deadline";
  const ms = new Date(iso) - Date.now();
  if (ms <= 0) return "past due";
  const m = Math.round(ms / 60000);
  return m < 60 ? `${m} min left` : m < 2880 ? `${Math.round(m / 60)} h left` : `${Math.round(m / 1440)} d left`;
}

const listBox = h("div", { id: "approval-list" });
const detailBox = h("div", { id: "approval-detail", class: "detail" });

async function load({ detail = true } = {}) {
  let items;
  try {
    items = await api("GET", "/api/v1/approvals" + query({ status: state.status, tenant: state.tenant, mine: state.mine ? "true" : "" }));
  } catch (err) {
    mount(listBox, h("p", { class: "empty" }, "unavailable: " + err.message));
    return;
  }
  if (!items.length) {
    mount(listBox, h("p", { class: "empty", id: "inbox-empty" },
      state.mine ? "Nothing is waiting for you." : "No requests match."));
  } else {
    const t = table([
      ["Request", (a) => h("div", {}, h("b", {}, a.tool), h("div", { class: "muted small" }, a.message))],
      ["Run", (a) => h("div", {}, a.workflow || "", h("div", { class: "muted small" }, a.tenant ? "tenant " + a.tenant : "no tenant"))],
      ["Requester", (a) => h("div", {}, a.requested_by, h("div", { class: "muted small" }, when(a.created_at)))],
      ["Deadline", (a) => a.status === "pending" ? left(a.timeout_at) : when(a.decided_at)],
      ["Status", (a) => h("span", { class: "status " + a.status }, a.status)],
    ], items, { id: "approval-table", class: "clickable" });
    t.querySelectorAll("tbody tr").forEach((tr) => {
      tr.addEventListener("click", () => select(tr.dataset.id));
      if (tr.dataset.id === state.id) tr.classList.add("selected");
    });
    mount(listBox, t);
  }
  if (!detail) return;
  if (!state.id && items.length) select(items[0].id);
  else if (state.id) show(state.id);
}

// New requests appear without a reload; the open request (and what is typed in it) stays.
setInterval(() => { if (document.visibilityState === "visible") load({ detail: false }); }, 5000);

function select(id) {
  state.id = id;
  sync();
  listBox.querySelectorAll("tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.id === id));
  show(id);
}

function kv(label, ...value) {
  return [h("dt", {}, label), h("dd", {}, ...value)];
}

async function show(id) {
  let a, etag;
  try {
    const resp = await fetch("/api/v1/approvals/" + encodeURIComponent(id), { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!resp.ok) throw new ApiError(resp.status, (await resp.json().catch(() => ({}))).detail || resp.statusText);
    a = await resp.json();
    etag = resp.headers.get("ETag");
  } catch (err) {
    mount(detailBox, h("p", { class: "empty" }, "unavailable: " + err.message));
    return;
  }
  const rule = a.rule || {};
  const parts = [
    h("h2", {}, a.tool, " ", h("span", { class: "status " + a.status, id: "detail-status" }, a.status)),
    h("p", { id: "detail-message" }, a.message),
    h("div", { class: "muted" }, "The exact action (what runs if approved):"),
    h("pre", { id: "detail-action" }, JSON.stringify(a.action, null, 2)),
    h("dl", { class: "facts" },
      kv("Action hash", h("code", { id: "detail-hash" }, a.action_hash)),
      kv("Rule that fired", h("code", { id: "detail-rule" }, rule.when || "always")),
      kv("Approvers", (rule.approvers || []).join(", ") + (a.quorum > 1 ? ` (${a.quorum} needed)` : "")),
      kv("Requester", h("span", { id: "detail-requester" }, a.requested_by)),
      kv("Deadline", h("span", { id: "detail-deadline" }, a.timeout_at ? `${when(a.timeout_at)} (${left(a.timeout_at)}), then ${rule.on_timeout}` : "none")),
      kv("Run", h("span", {}, `${a.workflow || ""} `, h("code", {}, a.run_id), " ",
        h("span", { class: "status " + (a.run_status || ""), id: "run-status" }, a.run_status || "?")),
        a.tenant ? h("span", { class: "muted" }, ` tenant ${a.tenant}`) : null),
      a.decided_by ? kv("Decided", `${a.status} by ${a.decided_by} via ${a.via || "?"} at ${when(a.decided_at)}` + (a.reason ? `: ${a.reason}` : "")) : null,
      a.decided_action ? kv("Approved as edited", h("pre", {}, JSON.stringify(a.decided_action, null, 2))) : null,
      a.votes && a.votes.length ? kv("Votes", a.votes.map((v) => h("div", {}, `${v.principal}: ${v.decision}` + (v.reason ? ` (${v.reason})` : "")))) : null,
      a.supersedes ? kv("Replaces", `request ${a.supersedes.id.slice(0, 8)} (${a.supersedes.status}) for `, h("pre", {}, JSON.stringify(a.supersedes.action, null, 2))) : null,
    ),
  ];
  if (a.may_decide) parts.push(decideForm(a, etag));
  else if (a.status === "pending") parts.push(h("p", { class: "muted", id: "why-not" }, "You cannot decide this request: " + a.why_not + "."));
  mount(detailBox, ...parts);
}

function decideForm(a, etag) {
  const reason = h("textarea", { id: "reason", rows: 2, cols: 50, placeholder: "Why (sent back to the agent; needed to reject)" });
  const args = h("textarea", { id: "edit-args", rows: 6, cols: 50, class: "mono" }, JSON.stringify(a.action.kwargs || {}, null, 2));
  const editBox = h("div", { class: "edit", hidden: true },
    h("div", { class: "muted" }, "Arguments to approve instead (JSON; checked against the tool's parameters):"), args,
    h("div", {}, h("button", { id: "approve-edited", class: "primary", onclick: () => {
      let parsed;
      try { parsed = JSON.parse(args.value); } catch (err) { toast("not JSON: " + err.message, "error"); return; }
      decide(a, etag, { decision: "edit", args: parsed, reason: reason.value || undefined });
    } }, "Approve with these arguments")));
  return h("div", { class: "decide", id: "decide" },
    reason,
    h("div", { class: "buttons" },
      h("button", { id: "approve", class: "primary", onclick: () => decide(a, etag, { decision: "approve", reason: reason.value || undefined }) }, "Approve"),
      h("button", { id: "reject", class: "danger", onclick: () => {
        if (!reason.value.trim()) { toast("a rejection needs a reason", "error"); reason.focus(); return; }
        decide(a, etag, { decision: "reject", reason: reason.value });
      } }, "Reject"),
      h("button", { id: "edit", onclick: () => { editBox.hidden = !editBox.hidden; } }, "Edit arguments…")),
    editBox);
}

async function decide(a, etag, body) {
  detailBox.querySelectorAll("#decide button").forEach((b) => { b.disabled = true; });
  try {
    const done = await api("POST", `/api/v1/approvals/${encodeURIComponent(a.id)}/decide`, body, { "If-Match": etag });
    toast(`${a.tool}: ${done.status}`);
  } catch (err) {
    toast(err.status === 412 ? "The request changed since you looked at it; look again." : err.message, "error");
  }
  await load();
  watchRun(a.id);
}

// The run wakes within a second of a decision: show its status as it changes.
async function watchRun(id) {
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 500));
    if (state.id !== id) return;
    const a = await api("GET", "/api/v1/approvals/" + encodeURIComponent(id)).catch(() => null);
    const el = document.getElementById("run-status");
    if (!a || !el) return;
    el.textContent = a.run_status;
    el.className = "status " + a.run_status;
    if (!["waiting", "running", "queued"].includes(a.run_status)) return;
  }
}

mount(root, filters(), h("div", { class: "split" }, listBox, detailBox));
load();
