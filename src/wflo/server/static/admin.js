// Admin: people and their roles, API tokens, signing someone out, disabling and enabling someone
// (offboarding; the reason asked is recorded with it). Every button is an API call
// by the signed-in person (the API decides; a viewer gets 403 and sees no write controls).
import { api, h, mount, may, when, toast, table, ApiError } from "./wflo.js";

const ROLES = ["viewer", "operator", "approver", "budget-admin", "auditor", "admin"];
const canGrant = may("grants:write");
const canToken = may("tokens:write");
const canSignOut = may("sessions:write");
const canDisable = may("users:write");
const me = document.body.dataset.principal || "";
let note = null; // what the last disable left working (tokens the person made), until the next one

// An admin or auditor of some tenants only sees and manages those tenants' grants and tokens.
const myGrants = (document.body.dataset.grants || "").split(" ").filter(Boolean).map((g) => g.split("@"));
const everywhere = myGrants.some(([role, scope]) => scope === "*" && (role === "admin" || role === "auditor"));
const tenants = [...new Set(myGrants.filter(([role, scope]) => (role === "admin" || role === "auditor") && scope.startsWith("tenant:"))
  .map(([, scope]) => scope.split("/")[0].slice("tenant:".length)))];
const defaultScope = everywhere || !tenants.length ? "*" : "tenant:" + tenants[0];

/** A list from the global route, or (for a tenant's admin) the union of their tenants' lists. */
async function listed(path) {
  if (everywhere || !tenants.length) return api("GET", path);
  const parts = await Promise.all(tenants.map((t) => api("GET", `${path}?tenant=${encodeURIComponent(t)}`)));
  return parts.flat();
}

/** People as the global users route gives them, or built from a tenant's grants. */
async function loadPeople() {
  if (everywhere || !tenants.length) return api("GET", "/api/v1/users");
  const byId = {};
  for (const g of await listed("/api/v1/grants")) {
    (byId[g.principal] ||= { id: g.principal, kind: g.principal.split(":")[0], grants: [], tokens: "–", sessions: "–" }).grants.push(g);
  }
  return Object.values(byId);
}

/** A fresh Idempotency-Key, so a retried click never grants or creates twice. */
function idem() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return { "Idempotency-Key": Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("") };
}

async function act(label, fn) {
  try {
    await fn();
    toast(label);
    await render();
  } catch (err) {
    toast(err.message, "error");
  }
}

function field(name, attrs = {}) {
  return h("label", {}, name + " ", h("input", { name, ...attrs }));
}

function roleSelect(name = "role") {
  return h("label", {}, "role ", h("select", { name }, ROLES.map((r) => h("option", { value: r }, r))));
}

function form(id, title, children, onsubmit) {
  const f = h("form", { id, class: "filters" }, h("strong", {}, title), ...children, h("button", { type: "submit", class: "primary" }, title));
  f.addEventListener("submit", (e) => {
    e.preventDefault();
    onsubmit(Object.fromEntries(new FormData(f)));
  });
  return f;
}

function grantCell(user) {
  return h("span", {}, user.grants.map((g) =>
    h("span", { class: "status grant", title: `${g.source}, by ${g.granted_by} via ${g.via}` }, `${g.role}@${g.scope}`,
      canGrant && g.source !== "oidc"
        ? h("button", { class: "link", title: "remove", "aria-label": `remove ${g.role}@${g.scope}`,
            onclick: () => confirm(`Remove ${g.role} on ${g.scope} from ${user.id}?`) &&
              act("role removed", () => api("POST", "/api/v1/grants/remove", { principal: user.id, role: g.role, scope: g.scope }, idem())) }, "×")
        : null)));
}

async function people() {
  const users = await loadPeople();
  const cols = [
    ["who", (u) => h("span", {}, h("b", {}, u.id), u.name ? h("div", { class: "muted" }, u.name) : null,
      u.disabled ? h("div", {}, h("span", { class: "status failed", title: `by ${u.disabled_by}, ${when(u.disabled_at)}` },
        "disabled"), " ", h("span", { class: "muted" }, u.disabled_reason || "")) : null)],
    ["kind", (u) => u.kind],
    ["roles", grantCell],
    ["last sign-in", (u) => when(u.last_login_at)],
    ["tokens", (u) => String(u.tokens)],
    ["sessions", (u) => String(u.sessions)],
  ];
  if (canSignOut && everywhere) cols.push(["", (u) => u.sessions
    ? h("button", { class: "danger", onclick: () => confirm(`Sign ${u.id} out everywhere?`) &&
        act(`${u.id} signed out`, () => api("POST", "/api/v1/sessions/revoke", { principal: u.id }, idem())) }, "Sign out everywhere")
    : ""]);
  // A person spans tenants: only an admin everywhere disables or enables (the API says so too).
  if (canDisable && everywhere) cols.push(["", (u) => u.kind === "group" || u.id === me ? ""
    : u.disabled
      ? h("button", { class: "enable", onclick: () => {
          const reason = prompt(`Enable ${u.id}? They sign in afresh (nothing revoked comes back). Reason:`, "");
          if (reason !== null) act(`${u.id} enabled`, () => api("POST", "/api/v1/users/enable", { principal: u.id, reason }, idem()));
        } }, "Enable")
      : h("button", { class: "danger disable", onclick: () => {
          const reason = prompt(`Disable ${u.id}? Their sessions and personal tokens end at once. Reason (recorded):`, "");
          if (reason === null) return;
          act(`${u.id} disabled`, async () => {
            const done = await api("POST", "/api/v1/users/disable", { principal: u.id, reason }, idem());
            note = done.tokens_made.length
              ? h("div", { class: "card", id: "offboard-note" },
                  h("strong", {}, `${u.id} is disabled. Tokens they made still work (service accounts): review them below.`),
                  h("ul", {}, done.tokens_made.map((t) => h("li", {}, h("code", {}, t.name), ` acts as ${t.principal}, ${t.role}@${t.scope}`))))
              : null;
          });
        } }, "Disable")]);
  return h("section", {}, h("h2", {}, "People"), note, table(cols, users, { id: "people" }),
    canGrant ? form("grant-form", "Grant", [field("principal", { placeholder: "user:ann@example.com", required: true }), roleSelect(),
      field("scope", { value: defaultScope, size: 16 })],
      (v) => act("role granted", () => api("POST", "/api/v1/grants", v, idem()))) : null);
}

async function tokenList() {
  const tokens = await listed("/api/v1/tokens");
  const cols = [
    ["name", (t) => t.name], ["acts as", (t) => t.principal], ["prefix", (t) => h("code", {}, t.prefix)],
    ["role", (t) => `${t.role}@${t.scope}`], ["expires", (t) => when(t.expires_at)], ["last used", (t) => when(t.last_used_at)],
    ["state", (t) => h("span", { class: "status " + (t.revoked_at ? "failed" : "ok") }, t.revoked_at ? "revoked" : "active")],
  ];
  if (canToken) cols.push(["", (t) => t.revoked_at ? "" : h("button", { class: "danger",
    onclick: () => confirm(`Revoke token ${t.name}?`) && act("token revoked", () => api("DELETE", `/api/v1/tokens/${t.id}`, undefined, idem())) }, "Revoke")]);
  const created = h("div", { id: "new-token" });
  return h("section", {}, h("h2", {}, "API tokens"), table(cols, tokens, { id: "tokens" }),
    canToken ? form("token-form", "Create token", [field("name", { placeholder: "ci-deploy", required: true }), roleSelect(),
      field("scope", { value: defaultScope, size: 16 }), field("expires", { value: "90d", size: 6 })],
      async (v) => {
        try {
          const t = await api("POST", "/api/v1/tokens", v, idem());
          await render();
          mount("new-token", h("div", { class: "card" }, h("strong", {}, `Token ${t.name} (shown once: copy it now)`),
            h("pre", { id: "token-secret" }, t.token)));
        } catch (err) { toast(err.message, "error"); }
      }) : null, created);
}

async function section(load) {
  try {
    return await load();
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) return null;
    return h("p", { class: "empty" }, "unavailable: " + err.message);
  }
}

async function render() {
  const parts = (await Promise.all([section(people), section(tokenList)])).filter(Boolean);
  if (!parts.length) parts.push(h("p", { id: "not-allowed", class: "empty" }, "Administration needs an admin or auditor role."));
  mount("admin", parts);
}

await render();
