// The API key of this browser tab and every call made with it.
// The key lives in sessionStorage: it is gone when the tab closes, and never leaves this origin.

const KEY = "conduit.key";
const WHO = "conduit.who";

let unauthorized = () => {};

/** app.js registers what a 401 does: forget the key and show the login screen with a message. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setSession(key, who) {
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(WHO, JSON.stringify(who));
}

export function getWho() {
  try {
    return JSON.parse(sessionStorage.getItem(WHO) || "null");
  } catch {
    return null;
  }
}

export function clearSession() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(WHO);
}

export function authHeaders(key = getKey()) {
  return {Authorization: `Bearer ${key}`};
}

export class Unauthorized extends Error {
  constructor(message) {
    super(message);
    this.name = "Unauthorized";
  }
}

/** The message of an OpenAI error body, or a plain description of the status. */
export function errorMessage(status, body) {
  const message = body && body.error && body.error.message;
  return message ? String(message) : `HTTP ${status}`;
}

/** Tell the app the key was refused, and stop the caller. */
export function refused(status, body) {
  const message = `The server refused the key (${status}): ${errorMessage(status, body)}`;
  unauthorized(message);
  return new Unauthorized(message);
}

/**
 * Call the API: {ok, status, data, error, headers}. A 401 sends the app back to the login screen
 * and throws Unauthorized; every other answer (404 included) is returned for the page to show.
 */
export async function api(path, {method = "GET", body, signal, key} = {}) {
  const headers = authHeaders(key);
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    return {ok: false, status: 0, data: null, error: `Network error: ${exc.message}`, headers: new Headers()};
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (res.status === 401) throw refused(res.status, data);
  return {ok: res.ok, status: res.status, data, error: res.ok ? null : errorMessage(res.status, data), headers: res.headers};
}

/** Data of a list answer, or null when the endpoint is missing or failed (the page shows "no data"). */
export function listOf(result) {
  return result.ok && result.data && Array.isArray(result.data.data) ? result.data.data : null;
}

/** Who holds `key`: {admin, tenant, keyId}. Uses /admin/whoami, or without it, what the key may do. */
export async function whoami(key) {
  const who = await api("/admin/whoami", {key});
  if (who.ok && who.data) {
    return {admin: Boolean(who.data.admin), tenant: who.data.tenant ?? null, keyId: who.data.key_id ?? null};
  }
  if (who.status !== 404) throw new Error(who.error);
  // An older server: the admin key may list keys (200), a tenant's key gets 403.
  const keys = await api("/admin/keys", {key});
  if (keys.ok) return {admin: true, tenant: null, keyId: null};
  const usage = await api("/v1/usage?group_by=tenant", {key});  // a 401 here means a bad key
  if (!usage.ok) throw new Error(usage.error);
  const rows = listOf(usage) || [];
  return {admin: false, tenant: rows.length ? rows[0].tenant : null, keyId: null};
}
