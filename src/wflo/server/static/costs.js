// Costs: spend over time by model, workflow or tenant (an SVG chart built with the DOM), the
// runs that spent most, and the budgets with spent, reserved and remaining, and their alerts.
import { api, h, mount, params, setParams, query, may, usd, when, toast, table } from "./wflo.js";

// A person whose grants are all in one tenant sees that tenant by default (the API refuses
// the every-tenant view to them).
function defaultTenant() {
  const scopes = (document.body.dataset.grants || "").split(" ").filter(Boolean).map((g) => g.split("@")[1] || "");
  if (scopes.includes("*")) return "";
  const t = scopes.find((s) => s.startsWith("tenant:"));
  return t ? t.slice(7).split("/")[0] : "";
}

const root = document.getElementById("costs");
const state = { since: params().since || "30d", until: params().until || "", by: params().by || "model", tenant: params().tenant ?? defaultTenant() };
const COLORS = ["#2f5bd3", "#e0803a", "#1f9d74", "#b54eb8", "#c9a227", "#4aa3c8", "#d0445a", "#6c757d"];

function filters() {
  const since = h("input", { id: "f-since", value: state.since, size: 10, title: "YYYY-MM-DD, an ISO time, or an age (30d)" });
  const until = h("input", { id: "f-until", value: state.until, size: 10, placeholder: "now" });
  const tenant = h("input", { id: "f-tenant", value: state.tenant, size: 10, placeholder: "any" });
  const by = h("select", { id: "f-by" }, ["model", "workflow", "tenant"].map((g) => h("option", { value: g, selected: g === state.by }, g)));
  const apply = () => {
    Object.assign(state, { since: since.value.trim(), until: until.value.trim(), tenant: tenant.value.trim(), by: by.value });
    setParams(state);
    load();
  };
  [since, until, tenant, by].forEach((el) => el.addEventListener("change", apply));
  return h("div", { class: "filters" }, h("label", {}, "Since", since), h("label", {}, "Until", until),
    h("label", {}, "Tenant", tenant), h("label", {}, "By", by));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// Days on x, USD on y, one stacked bar per day, one colour per model/workflow/tenant.
function chart(rows) {
  const keys = [];
  for (const r of rows) for (const k of Object.keys(r.split || {})) if (!keys.includes(k)) keys.push(k);
  const color = (k) => COLORS[keys.indexOf(k) % COLORS.length];
  const W = 860, H = 220, L = 64, B = 28, T = 10;
  const max = Math.max(...rows.map((r) => Number(r.cost_usd)), 0) || 1;
  const bw = Math.max(4, Math.min(40, (W - L - 10) / Math.max(rows.length, 1) - 6));
  const el = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", id: "spend-chart", "aria-label": "spend over time" });
  for (const f of [0, 0.5, 1]) {
    const y = T + (H - T - B) * (1 - f);
    el.append(svg("line", { x1: L, x2: W - 5, y1: y, y2: y, stroke: "#e4e7ec" }),
      svg("text", { x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#667085" }, usd(max * f)));
  }
  rows.forEach((r, i) => {
    const x = L + 8 + i * ((W - L - 10) / rows.length);
    let y = H - B;
    for (const [k, v] of Object.entries(r.split || {})) {
      const bh = (Number(v) / max) * (H - T - B);
      y -= bh;
      el.append(svg("rect", { x, y, width: bw, height: Math.max(bh, 0.5), fill: color(k), class: "bar-seg" },
        svg("title", {}, `${r.key} ${k}: ${usd(v)}`)));
    }
    if (rows.length <= 16 || i % Math.ceil(rows.length / 12) === 0) {
      el.append(svg("text", { x: x + bw / 2, y: H - B + 16, "text-anchor": "middle", "font-size": 11, fill: "#667085" }, r.key.length > 10 ? r.key.slice(11) : r.key.slice(5)));
    }
  });
  const legend = h("div", { class: "legend" }, keys.map((k) => {
    const sw = h("span", { class: "swatch" });
    sw.style.background = color(k);
    return h("span", {}, sw, k);
  }));
  return h("div", { class: "card chart" }, el, legend);
}

function meter(parts, total) {
  const bar = h("div", { class: "bar stacked" });
  for (const [value, cls] of parts) {
    const seg = h("span", { class: cls });
    seg.style.width = Math.min(100, total > 0 ? (100 * value) / total : 0) + "%";
    bar.append(seg);
  }
  return bar;
}

function groupTable(data) {
  const max = Math.max(...data.rows.map((r) => Number(r.cost_usd)), 0);
  return table([
    [state.by, (r) => h("b", {}, r.key)],
    ["Spend", (r) => h("div", { class: "spend" }, usd(r.cost_usd), meter([[Number(r.cost_usd), ""]], max))],
    ["Calls", (r) => r.calls],
    ["Input tokens", (r) => r.input_tokens.toLocaleString()],
    ["Output tokens", (r) => r.output_tokens.toLocaleString()],
    ["Estimated", (r) => Number(r.estimated_usd) ? usd(r.estimated_usd) : "–"],
  ], data.rows.map((r) => ({ ...r, id: r.key })), { id: "group-table" });
}

function topTable(runs) {
  return table([
    ["Run", (r) => h("a", { href: "/runs/" + encodeURIComponent(r.run_id), class: "mono" }, r.run_id.slice(0, 18))],
    ["Workflow", (r) => r.workflow],
    ["Tenant", (r) => r.tenant || "–"],
    ["Status", (r) => h("span", { class: "status " + r.status }, r.status)],
    ["Started", (r) => when(r.created_at)],
    ["Calls", (r) => r.calls],
    ["Spend", (r) => h("b", {}, usd(r.cost_usd))],
    ["By model", (r) => Object.entries(r.split || {}).map(([m, v]) => `${m} ${usd(v)}`).join(", ")],
  ], runs.map((r) => ({ ...r, id: r.run_id })), { id: "top-runs" });
}

function budgetEditor(b, onDone) {
  const scope = h("input", { name: "scope", value: b ? b.scope : "", placeholder: "tenant:acme", size: 18, readonly: b ? true : null });
  const amount = h("input", { name: "usd", value: b ? b.limit_usd : "", placeholder: "USD", size: 8, inputmode: "decimal" });
  const period = h("select", { name: "period" }, ["none", "day", "month"].map((p) => h("option", { value: p, selected: b ? p === b.period : p === "day" }, p)));
  const form = h("form", { class: "budget-form inline-form" }, scope, amount, period,
    h("button", { type: "submit", class: "primary" }, "Save"),
    b ? h("button", { type: "button", onclick: () => onDone(false) }, "Cancel") : null);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("PUT", "/api/v1/budgets", { scope: scope.value.trim(), usd: amount.value.trim(), period: period.value });
      toast(`budget ${scope.value.trim()} set to ${usd(amount.value)} per ${period.value === "none" ? "total" : period.value}`);
      onDone(true);
    } catch (err) {
      toast(err.message, "error");
    }
  });
  return form;
}

function budgetTable(budgets) {
  const writer = may("budgets:write");
  const t = table([
    ["Scope", (b) => h("b", {}, b.scope)],
    ["Period", (b) => b.period === "none" ? "total" : `${b.period} from ${b.period_start.slice(0, 10)}`],
    ["Limit", (b) => usd(b.limit_usd)],
    ["Spent / reserved / remaining", (b) => {
      const lim = Number(b.limit_usd), spent = Number(b.spent_usd), res = Number(b.reserved_usd);
      return h("div", { class: "spend" },
        h("span", {}, `${usd(spent)} / ${usd(res)} / `, h("b", { class: Number(b.remaining_usd) <= 0 ? "bad" : "" }, usd(b.remaining_usd))),
        meter([[spent, spent >= lim ? "over" : ""], [res, "reserved"]], lim));
    }],
    ["Alerts", (b) => (b.alerted || []).length ? h("span", { class: "status warn" }, "crossed " + b.alerted.map((p) => p + "%").join(", ")) : h("span", { class: "muted" }, "at " + (b.alerts || []).map((p) => p + "%").join(", "))],
    ["", (b) => writer ? h("button", { class: "edit-budget", dataset: { scope: b.scope } }, "Edit") : ""],
  ], budgets.map((b) => ({ ...b, id: b.scope })), { id: "budget-table" });
  t.querySelectorAll("button.edit-budget").forEach((btn) => btn.addEventListener("click", () => {
    const b = budgets.find((x) => x.scope === btn.dataset.scope);
    const cell = btn.closest("tr");
    const row = h("tr", { class: "editing" }, h("td", { colspan: 6 }, budgetEditor(b, (saved) => saved ? load() : row.remove())));
    cell.after(row);
  }));
  return t;
}

function alertList(alerts) {
  if (!alerts.length) return h("p", { class: "muted", id: "alerts-empty" }, "No budget thresholds crossed in this window.");
  return table([
    ["When", (a) => when(a.at)],
    ["Scope", (a) => a.scope],
    ["Threshold", (a) => h("span", { class: "status " + (a.percent >= 100 ? "failed" : "waiting") }, a.percent + "%")],
    ["Spent of limit", (a) => `${usd(a.spent_usd)} of ${usd(a.limit_usd)}`],
    ["Run", (a) => h("a", { href: "/runs/" + encodeURIComponent(a.run_id), class: "mono" }, `${a.workflow} ${a.run_id.slice(0, 10)}`)],
  ], alerts, { id: "alert-table" });
}

async function section(title, id, load) {
  try {
    return h("section", { id }, h("h2", {}, title), await load());
  } catch (err) {
    return h("section", { id }, h("h2", {}, title), h("p", { class: "empty" }, "unavailable: " + err.message));
  }
}

const body = h("div", {});
async function load() {
  const win = { since: state.since, until: state.until, tenant: state.tenant };
  const parts = await Promise.all([
    section("Spend over time", "spend", async () => {
      let [days, groups] = await Promise.all([
        api("GET", "/api/v1/costs" + query({ ...win, group: "day", split: state.by })),
        api("GET", "/api/v1/costs" + query({ ...win, group: state.by })),
      ]);
      // A day or two of spend reads better hour by hour.
      if (days.rows.length && days.rows.length <= 2) days = await api("GET", "/api/v1/costs" + query({ ...win, group: "hour", split: state.by }));
      const t = groups.total;
      return h("div", {},
        h("div", { class: "cards" },
          h("div", { class: "card" }, h("div", { class: "muted" }, "Spent"), h("div", { class: "value", id: "total-spend" }, usd(t.cost_usd))),
          h("div", { class: "card" }, h("div", { class: "muted" }, "LLM calls"), h("div", { class: "value" }, String(t.calls))),
          h("div", { class: "card" }, h("div", { class: "muted" }, "Tokens in / out"), h("div", { class: "value" }, `${t.input_tokens.toLocaleString()} / ${t.output_tokens.toLocaleString()}`)),
          h("div", { class: "card" }, h("div", { class: "muted" }, "Of which estimated"), h("div", { class: "value" }, Number(t.estimated_usd) ? usd(t.estimated_usd) : "–"))),
        days.rows.length ? chart(days.rows) : h("p", { class: "empty" }, "No LLM calls in this window."),
        groups.rows.length ? groupTable(groups) : null);
    }),
    section("Top runs by cost", "top", async () => {
      const runs = await api("GET", "/api/v1/costs/top-runs" + query({ ...win, limit: 10 }));
      return runs.length ? topTable(runs) : h("p", { class: "empty" }, "No runs spent in this window.");
    }),
    section("Budgets", "budgets", async () => {
      const budgets = await api("GET", "/api/v1/budgets" + query({ tenant: state.tenant }));
      return h("div", {},
        budgets.length ? budgetTable(budgets) : h("p", { class: "empty" }, "No budget limits set."),
        may("budgets:write") ? h("div", { class: "new-budget" }, h("span", { class: "muted" }, "Set a budget: "), budgetEditor(null, (saved) => saved && load())) : null);
    }),
    section("Alerts", "alerts", async () => alertList(await api("GET", "/api/v1/budgets/alerts" + query({ since: state.since, tenant: state.tenant })))),
  ]);
  mount(body, parts);
}

mount(root, filters(), body);
load();
