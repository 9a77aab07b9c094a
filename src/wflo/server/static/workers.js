// Workers: who is up (busy or idle), their leases and runs, and the queue depth per workflow.
import { api, h, mount, when, table, ApiError } from "./wflo.js";

async function render() {
  let data;
  try {
    data = await api("GET", "/api/v1/workers");
  } catch (err) {
    const msg = err instanceof ApiError && err.status === 403 ? "Seeing workers needs a global role." : "unavailable: " + err.message;
    mount("workers", h("p", { class: "empty", id: "not-allowed" }, msg));
    return;
  }
  const workers = data.workers.length
    ? table([
        ["worker", (w) => h("code", {}, w.id)], ["host", (w) => w.host], ["pid", (w) => w.pid],
        ["state", (w) => h("span", { class: w.leases ? "status running" : "status", title: w.registered ? "" : "known from its leases only" },
          w.leases ? "busy" : "idle")],
        ["concurrency", (w) => (w.concurrency == null ? "" : String(w.concurrency))],
        ["queues", (w) => (w.queues == null ? (w.registered ? "all declared" : "") : w.queues.join(", ") || "none named")],
        ["leases", (w) => String(w.leases)], ["started", (w) => (w.started_at ? when(w.started_at) : "")],
        ["last heartbeat", (w) => when(w.last_heartbeat)],
        ["runs", (w) => h("span", {}, w.runs.slice(0, 5).map((r) => h("a", { href: "/runs/" + encodeURIComponent(r.id), class: "run" }, r.id, " ")),
          w.leases > 5 ? `… ${w.leases - 5} more` : "")],
      ], data.workers, { id: "worker-list" })
    : h("p", { class: "empty" }, "No worker is up: start one with `wflo worker -i MODULE`.");
  const depth = {};
  for (const q of data.queues) (depth[q.workflow] ||= { workflow: q.workflow, id: q.workflow })[q.status] = q.count;
  for (const o of data.orphaned) (depth[o.workflow] ||= { workflow: o.workflow, id: o.workflow }).orphaned = o.count;
  const rows = Object.values(depth);
  const queues = rows.length
    ? table([
        ["workflow", (q) => h("a", { href: `/runs?workflow=${encodeURIComponent(q.workflow)}` }, q.workflow)],
        ["queued", (q) => String(q.queued || 0)], ["running", (q) => String(q.running || 0)],
        ["waiting", (q) => String(q.waiting || 0)],
        ["awaiting recovery", (q) => h("span", { class: q.orphaned ? "status failed" : "" }, String(q.orphaned || 0))],
      ], rows, { id: "queues" })
    : h("p", { class: "empty" }, "No unfinished runs.");
  mount("workers",
    h("div", { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "muted" }, "Workers up"), h("div", { class: "value", id: "alive" }, String(data.workers.length))),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Idle"), h("div", { class: "value", id: "idle" }, String(data.workers.filter((w) => !w.leases).length))),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Queued runs"),
        h("div", { class: "value", id: "queued" }, String(data.queues.filter((q) => q.status === "queued").reduce((a, q) => a + q.count, 0))))),
    h("h2", {}, "Workers"), workers, h("h2", {}, "Queues"), queues,
    h("p", { class: "muted" }, `Updated ${when(data.now)}; a lease lasts ${data.lease_seconds} s and is renewed by each heartbeat.`));
}

await render();
setInterval(render, 5000);
