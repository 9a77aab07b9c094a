// Overview: what needs attention now (pending approvals) and the budgets' state.
import { api, h, mount, usd, ApiError } from "./wflo.js";

async function card(title, load) {
  try {
    return h("div", { class: "card" }, h("div", { class: "muted" }, title), await load());
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) return null;  // not this person's to see
    return h("div", { class: "card" }, h("div", { class: "muted" }, title), h("div", {}, "unavailable: " + err.message));
  }
}

const cards = await Promise.all([
  card("Runs in progress", async () => {
    const w = await api("GET", "/api/v1/workers");
    const by = {};
    for (const q of w.queues) by[q.status] = (by[q.status] || 0) + q.count;
    const total = Object.values(by).reduce((a, b) => a + b, 0);
    return h("div", {}, h("a", { class: "value", href: "/runs?status=queued,running,waiting", id: "in-progress" }, String(total)),
      h("div", { class: "muted" }, Object.entries(by).map(([k, v]) => `${v} ${k}`).join(" · ") || "none"),
      h("div", { class: "muted" }, `${w.workers.length} worker${w.workers.length === 1 ? "" : "s"} holding runs`));
  }),
  card("Needs attention (7 days)", async () => {
    const page = await api("GET", "/api/v1/runs?status=failed,stopped,blocked&since=7d&limit=5");
    return h("div", {}, h("a", { class: "value", href: "/runs?status=failed,stopped,blocked&since=7d", id: "attention" },
      page.items.length + (page.next_cursor ? "+" : "")),
      page.items.map((r) => h("div", { class: "muted" }, h("a", { href: "/runs/" + encodeURIComponent(r.id) }, r.workflow), " " + r.status)));
  }),
  card("LLM spend (7 days)", async () => {
    const spend = await api("GET", "/api/v1/costs?group=model&since=7d");
    return h("div", {}, h("a", { class: "value", href: "/costs?since=7d", id: "spend-7d" }, usd(spend.total.cost_usd)),
      h("div", { class: "muted" }, `${spend.total.calls} calls`));
  }),
  card("Approvals waiting", async () => {
    const items = await api("GET", "/api/v1/approvals?status=pending");
    return h("a", { class: "value", href: "/approvals", id: "pending-approvals" }, String(items.length));
  }),
  card("Budgets", async () => {
    const items = await api("GET", "/api/v1/budgets");
    const over = items.filter((b) => b.limit_usd && Number(b.spent_usd) + Number(b.reserved_usd) >= Number(b.limit_usd));
    return h("div", {}, h("div", { class: "value" }, String(items.length)),
      h("div", { class: "muted" }, over.length ? `${over.length} at the limit` : "none at the limit"));
  }),
]);
mount("overview", cards);
