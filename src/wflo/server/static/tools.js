// Tools: the catalog (built-ins and installed packages) with each manifest, and who may use what.
import { api, h, mount, table, toast, usd, when, ApiError } from "./wflo.js";

function effects(t) {
  return Object.entries(t.effects || {}).filter(([, v]) => v).map(([k]) => k).join(", ") || "–";
}

function reach(t) {
  const c = t.capabilities || {};
  const fs = c.filesystem || {};
  const parts = [];
  if ((c.network || []).length) parts.push("net: " + c.network.join(" "));
  if ((fs.read || []).length) parts.push("read: " + fs.read.join(" "));
  if ((fs.write || []).length) parts.push("write: " + fs.write.join(" "));
  if ((c.secrets || []).length) parts.push("secrets: " + c.secrets.join(" "));
  if (c.subprocess) parts.push("subprocess");
  return parts.join("; ") || "nothing";
}

async function showTools() {
  try {
    const tools = await api("GET", "/api/v1/tools");
    mount("tools", table([
      ["Tool", (t) => h("details", {}, h("summary", {}, t.name), h("pre", {}, JSON.stringify(t, null, 2)))],
      ["Source", (t) => t.source],
      ["Effects", effects],
      ["May reach", reach],
      ["Enforced", (t) => t.enforcement],
      ["Cost/call", (t) => usd(t.capabilities && t.capabilities.cost_usd)],
      ["Signature", (t) => t.signature || "–"],
      ["Description", (t) => t.description],
    ], tools, { id: "tools-table" }));
  } catch (err) {
    mount("tools", h("p", { class: "muted" }, err instanceof ApiError && err.status === 403 ? "You may not see tools." : "unavailable: " + err.message));
  }
}

async function showGrants() {
  let grants;
  try {
    grants = await api("GET", "/api/v1/tools/grants");
  } catch (err) {
    mount("tool-grants", h("p", { class: "muted" }, "unavailable: " + err.message));
    return;
  }
  const revoke = (g) => h("button", {
    onclick: async () => {
      try {
        await api("POST", "/api/v1/tools/grants/remove", { tool: g.tool, to: g.principal });
        toast(`revoked ${g.tool} from ${g.principal}`);
        showGrants();
      } catch (err) { toast(err.message, "error"); }
    },
  }, "Revoke");
  const form = h("form", { id: "grant-form", class: "inline",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const body = { tool: f.get("tool"), to: f.get("to") };
      if (f.get("approval")) body.approval = f.get("approval");
      if (f.get("max_calls")) body.max_calls = Number(f.get("max_calls"));
      if (f.get("budget_usd")) body.budget_usd = f.get("budget_usd");
      try {
        await api("POST", "/api/v1/tools/grants", body);
        toast(`granted ${body.tool} to ${body.to}`);
        showGrants();
      } catch (err) { toast(err.message, "error"); }
    } },
    h("input", { name: "tool", placeholder: "tool", required: true }),
    h("input", { name: "to", placeholder: "workflow:NAME", required: true }),
    h("input", { name: "approval", placeholder: "approval (none, required, role:x)" }),
    h("input", { name: "max_calls", placeholder: "max calls/run", type: "number", min: 1 }),
    h("input", { name: "budget_usd", placeholder: "budget USD/run" }),
    h("button", { type: "submit" }, "Grant"));
  mount("tool-grants",
    grants.length ? table([
      ["Tool", (g) => g.tool], ["To", (g) => g.principal], ["Approval", (g) => g.approval || "default"],
      ["Max calls", (g) => g.max_calls ?? "–"], ["Budget", (g) => usd(g.budget_usd)],
      ["By", (g) => g.granted_by], ["At", (g) => when(g.granted_at)], ["", revoke],
    ], grants, { id: "grants-table" }) : h("p", { class: "muted" }, "No tool grants yet."),
    form);
}

await Promise.all([showTools(), showGrants()]);
