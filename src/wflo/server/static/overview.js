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
  card("Approvals waiting", async () => {
    const items = await api("GET", "/api/v1/approvals?status=pending");
    return h("a", { class: "value", href: "/approvals", id: "pending-approvals" }, String(items.length));
  }),
  card("Budgets", async () => {
    const items = await api("GET", "/api/v1/budgets");
    const over = items.filter((b) => b.limit_usd && Number(b.spent_usd) + Number(b.reserved_usd) >= Number(b.limit_usd));
    return h("div", {}, h("div", { class: "value" }, String(items.length)),
      h("div", { class: "muted" }, over.length ? `${over.length} at the limit` : "none at the limit"),
      h("div", { class: "muted" }, "spent " + usd(items.reduce((a, b) => a + Number(b.spent_usd || 0), 0))));
  }),
]);
mount("overview", cards);
