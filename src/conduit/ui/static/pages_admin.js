// Keys (admin only: list, create with the secret shown once, revoke) and Usage (usage by tenant,
// model and day; tenants with their budgets; feedback by model and prompt version).

import {h, clear, field, table, noData, errorBox, card, badge, thumb, fmtNum, fmtUsd, fmtTime, fmtPct} from "./dom.js";
import {api, listOf} from "./api.js";

export async function keysPage(view, ctx) {
  const list = h("div");
  const created = h("div", {"data-testid": "new-key"});
  const inputs = {
    tenant: h("input", {id: "k-tenant", type: "text", required: true, maxlength: "200", "data-testid": "key-tenant"}),
    name: h("input", {id: "k-name", type: "text", maxlength: "200", "data-testid": "key-name"}),
    expires: h("input", {id: "k-expires", type: "date", "data-testid": "key-expires"}),
    rpm: h("input", {id: "k-rpm", type: "number", min: "1", step: "1", "data-testid": "key-rpm"}),
  };
  const message = h("div");
  const form = h("form", {class: "filters", "data-testid": "key-form"},
    field("Tenant", inputs.tenant), field("Name", inputs.name), field("Expires", inputs.expires),
    field("Requests per minute", inputs.rpm),
    h("div", {class: "field actions"}, h("button", {type: "submit", class: "primary", "data-testid": "key-create"}, "Create key")));
  clear(view, h("div", {class: "page-head"}, h("h1", null, "API keys")),
    card("New key", form, message, created), card("Keys", list));

  const load = async () => {
    const r = await api("/admin/keys");
    if (!ctx.alive()) return;
    const keys = listOf(r);
    if (keys === null) { clear(list, r.status === 404 ? noData() : errorBox(`Keys failed: ${r.error}`)); return; }
    keys.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    clear(list, table([
      {label: "Id", value: (k) => k.id, class: "mono"},
      {label: "Tenant", value: (k) => k.tenant},
      {label: "Name", value: (k) => k.name},
      {label: "Key", value: (k) => k.hint, class: "mono"},
      {label: "Status", value: (k) => badge(k.status, k.status === "active" ? "ok" : "error")},
      {label: "Created", value: (k) => fmtTime(k.created_at), class: "nowrap"},
      {label: "Expires", value: (k) => (k.expires_at ? fmtTime(k.expires_at) : "never"), class: "nowrap"},
      {label: "Limits", value: (k) => limitsText(k.limits)},
      {label: "", value: (k) => (k.status === "active" ? revokeButton(k, load, message) : null)},
    ], keys, {testid: "keys-table", empty: "no keys yet", rowProps: (k) => ({"data-testid": "key-row", "data-id": k.id})}));
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {tenant: inputs.tenant.value.trim()};
    if (inputs.name.value.trim()) body.name = inputs.name.value.trim();
    if (inputs.expires.value) body.expires_at = inputs.expires.value;
    if (inputs.rpm.value) body.limits = {rpm: Number(inputs.rpm.value)};
    const r = await api("/admin/keys", {method: "POST", body});
    if (!ctx.alive()) return;
    if (!r.ok) { clear(message, errorBox(`The key was not created: ${r.error}`)); clear(created); return; }
    clear(message);
    form.reset();
    const secret = h("input", {id: "new-key-secret", type: "text", readonly: true, value: r.data.key, class: "mono",
      "data-testid": "new-key-secret"});
    const copy = h("button", {type: "button", onclick: async () => {
      secret.select();
      try { await navigator.clipboard.writeText(r.data.key); copy.textContent = "Copied"; } catch { copy.textContent = "Select and copy"; }
    }}, "Copy");
    clear(created, h("div", {class: "secret-box", role: "alert"},
      h("p", null, h("b", null, `Key ${r.data.id} for tenant ${r.data.tenant}. `),
        "Copy it now: the secret is shown only once and cannot be read back."),
      h("div", {class: "secret-row"}, h("label", {for: "new-key-secret", class: "sr-only"}, "New key secret"), secret, copy)));
    await load();
  });
  await load();
}

function limitsText(limits) {
  if (!limits) return null;
  const parts = [limits.rpm ? `${limits.rpm} rpm` : null, limits.tpm ? `${limits.tpm} tpm` : null,
    limits.max_concurrent ? `${limits.max_concurrent} concurrent` : null].filter(Boolean);
  return parts.length ? parts.join(", ") : null;
}

function revokeButton(key, reload, message) {
  // Two clicks: a stray click revokes nothing.
  const button = h("button", {type: "button", class: "danger small", "data-testid": "key-revoke"}, "Revoke");
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Confirm revoke";
      setTimeout(() => { button.dataset.armed = ""; button.textContent = "Revoke"; }, 4000);
      return;
    }
    const r = await api(`/admin/keys/${encodeURIComponent(key.id)}`, {method: "DELETE"});
    if (!r.ok) clear(message, errorBox(`Revoking ${key.id} failed: ${r.error}`));
    await reload();
  });
  return button;
}

export async function usagePage(view, ctx) {
  const usage = h("div");
  const tenants = h("div");
  const feedback = h("div");
  clear(view, h("div", {class: "page-head"}, h("h1", null, "Usage")),
    card("Tenants and budgets", tenants), card("Usage by tenant, model and day", usage), card("Feedback", feedback));
  const [u, t, f] = await Promise.all([api("/v1/usage?group_by=tenant,model,day"), api("/admin/tenants"),
    api("/admin/feedback/summary?group_by=model,prompt_version")]);
  if (!ctx.alive()) return;

  const rows = listOf(u);
  if (rows === null) {
    clear(usage, u.status === 404 ? noData() : errorBox(`Usage failed: ${u.error}`));
  } else {
    rows.sort((a, b) => String(b.day).localeCompare(String(a.day)) || String(a.tenant).localeCompare(String(b.tenant)));
    const sum = (k) => rows.reduce((acc, r) => acc + (Number(r[k]) || 0), 0);
    clear(usage, table([
      {label: "Day", value: (r) => r.day, class: "nowrap"},
      {label: "Tenant", value: (r) => r.tenant ?? "(admin key)"},
      {label: "Model", value: (r) => r.model},
      {label: "Requests", value: (r) => fmtNum(r.requests), class: "num"},
      {label: "Prompt tokens", value: (r) => fmtNum(r.prompt_tokens), class: "num"},
      {label: "Completion tokens", value: (r) => fmtNum(r.completion_tokens), class: "num"},
      {label: "Cost", value: (r) => fmtUsd(r.cost_usd), class: "num"},
    ], rows, {testid: "usage-table", empty: "no usage yet"}),
    rows.length ? h("p", {class: "muted", "data-testid": "usage-totals"}, `Total: ${fmtNum(sum("requests"))} requests, ` +
      `${fmtNum(sum("prompt_tokens"))} prompt and ${fmtNum(sum("completion_tokens"))} completion tokens, ` +
      `${fmtUsd(sum("cost_usd"))}`) : null);
  }

  const tenantRows = listOf(t);
  clear(tenants, tenantRows === null ? (t.status === 404 || t.status === 403 ? noData() : errorBox(`Tenants failed: ${t.error}`))
    : table([
      {label: "Tenant", value: (r) => r.tenant},
      {label: "Keys", value: (r) => fmtNum(r.keys), class: "num"},
      {label: "Requests", value: (r) => fmtNum(r.requests), class: "num"},
      {label: "Spent", value: (r) => fmtUsd(r.spent_usd), class: "num"},
      {label: "Budget", value: (r) => (r.budget ? `${fmtUsd(r.budget.usd)} / ${r.budget.period}` : "none")},
      {label: "Used", value: (r) => budgetBar(r)},
    ], tenantRows, {testid: "tenants-table", empty: "no tenants yet"}));

  const fb = listOf(f);
  clear(feedback, fb === null ? noData() : table([
    {label: "Model", value: (r) => r.model},
    {label: "Prompt version", value: (r) => r.prompt_version, class: "mono"},
    {label: h("span", {"aria-label": "thumbs up"}, thumb("up")), value: (r) => fmtNum(r.up), class: "num"},
    {label: h("span", {"aria-label": "thumbs down"}, thumb("down")), value: (r) => fmtNum(r.down), class: "num"},
    {label: "Score", value: (r) => (r.score === null || r.score === undefined ? null : Number(r.score).toFixed(2)), class: "num"},
  ], fb, {testid: "feedback-summary", empty: "no feedback yet"}));
}

function budgetBar(r) {
  if (!r.budget || !r.budget.usd) return null;
  const used = (Number(r.spent_usd) || 0) / r.budget.usd;
  const fill = h("div", {class: ["meter-fill", used >= 1 ? "over" : used >= 0.8 ? "near" : null]});
  fill.style.width = `${Math.min(used, 1) * 100}%`;
  return h("div", {class: "meter-wrap"}, h("div", {class: "meter", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
    "aria-valuenow": String(Math.round(used * 100)), "aria-label": `budget used by ${r.tenant}`}, fill),
  h("span", {class: "muted"}, fmtPct(used)));
}
