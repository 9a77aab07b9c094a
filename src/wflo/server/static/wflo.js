// The panel's shared helpers: every page module imports what it needs from here.
// No framework and no build step: plain ES modules that any current browser runs.

/** An API answer that was not 2xx: `status` and the server's message. */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function cookie(name) {
  const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : "";
}

/** Call the API as the signed-in person. State-changing calls carry the CSRF token. */
export async function api(method, path, body, headers = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = cookie("wflo_csrf");
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    location.assign("/auth/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError(401, "signed out");
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!resp.ok) {
    const detail = data && (data.detail || (data.error && data.error.message));
    throw new ApiError(resp.status, typeof detail === "string" ? detail : resp.statusText, data);
  }
  return data;
}

// Bidirectional controls (U+202A-202E embeddings and overrides, U+2066-2069 isolates, U+200E/F
// and U+061C marks) reorder the text after them: a tool argument "\u202etxt.exe" reads "exe.txt".
// Stored text is shown with them as visible escapes, never applied. Inside JSON text the escape
// reads back as the same character, so an edited action keeps them.
const BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** `text` with its bidirectional controls written out as `\u202e` (what h() shows). */
export function visible(text) {
  return String(text).replace(BIDI, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

/** Build a DOM element: h("a", {href: "/runs", class: "x"}, "text", child). Text is never HTML,
 *  and its bidirectional controls are shown, not applied (see `visible`). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : k === "title" ? visible(v) : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(visible(c)));
  }
  return el;
}

/** Replace the children of `el` (an element or an id) with `nodes`. */
export function mount(el, ...nodes) {
  const target = typeof el === "string" ? document.getElementById(el) : el;
  target.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
  return target;
}

/** The page's query string as an object (filters live in the URL, so a view can be shared). */
export function params() {
  return Object.fromEntries(new URLSearchParams(location.search));
}

/** Put filters in the URL without reloading (empty values are dropped). */
export function setParams(obj) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(obj)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
}

/** A query string for an API path from an object (empty values dropped). */
export function query(obj) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(obj)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

/** Listen to a server-sent events stream; reconnects by itself. Returns a function that stops it. */
export function stream(path, onEvent) {
  const es = new EventSource(path, { withCredentials: true });
  es.onmessage = (m) => onEvent(JSON.parse(m.data), m);
  return () => es.close();
}

/** Whether the signed-in person holds `permission` anywhere (the server lists them on the page;
 *  the API still decides every call). */
export function may(permission) {
  return (document.body.dataset.permissions || "").split(" ").includes(permission);
}

export function usd(value) {
  if (value === null || value === undefined || value === "") return "–";
  const n = Number(value);
  return "$" + (Math.abs(n) >= 1 ? n.toFixed(2) : n.toPrecision(3).replace(/0+$/, "").replace(/\.$/, ""));
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

/** A short message at the bottom of the page (errors stay until clicked). */
export function toast(message, kind = "info") {
  const el = h("div", { class: "toast " + kind, role: kind === "error" ? "alert" : "status" }, message);
  document.body.append(el);
  el.addEventListener("click", () => el.remove());
  if (kind !== "error") setTimeout(() => el.remove(), 4000);
}

/** A table from rows: columns are [header, row => cell] pairs. */
export function table(columns, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, columns.map(([head]) => h("th", {}, head)))),
    h("tbody", {}, rows.map((r) => h("tr", { dataset: { id: r.id ?? "" } }, columns.map(([, cell]) => h("td", {}, cell(r)))))),
  );
}

/** POST (or GET) and save the answer as a file (its Content-Disposition name); errors as ApiError. */
export async function download(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") init.headers["X-CSRF-Token"] = cookie("wflo_csrf");
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (!resp.ok) {
    let detail = resp.statusText;
    try { const data = await resp.json(); detail = data.detail || (data.error && data.error.message) || detail; } catch { /* not JSON */ }
    throw new ApiError(resp.status, typeof detail === "string" ? detail : resp.statusText);
  }
  const match = /filename="?([^";]+)"?/.exec(resp.headers.get("Content-Disposition") || "");
  const url = URL.createObjectURL(await resp.blob());
  const a = h("a", { href: url, download: match ? match[1] : "download" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return match ? match[1] : "download";
}
