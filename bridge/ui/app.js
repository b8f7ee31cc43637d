// hstream-bridge console: what an operator keeps open next to the bridge.
//
// Everything comes from the bridge's own API, polled every few seconds:
//   GET /ready          health (no token needed)
//   GET /stats          per-rule totals and rates computed by the bridge, the memory budget
//   GET /rules          the rules; POST, PUT and DELETE /rules/{id} change them
//   POST /rules/test    the dry run
//   GET /dead-letters   the latest records of the dead-letter stream
//   GET /sources        the database (CDC) sources and their status
//   GET /cluster        the replicas: alive or not, configuration version, what each runs
// With --api-token the first call that gets a 401 asks for the token; it is kept in
// sessionStorage (this tab only) and sent as "Authorization: Bearer", never in a URL.
//
// No framework and no build step. Text from the bridge is always set with textContent,
// never parsed as HTML.

const TOKEN_KEY = "hstream-bridge.api-token";
const REFRESH_SECONDS = 3;
const DEAD_LETTER_SECONDS = 5;
const TOAST_SECONDS = 5;
const DELETE_ARM_SECONDS = 4;

const $ = (selector, root = document) => root.querySelector(selector);

/** A new element: `props` are attributes, except class, text and on<event> handlers. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// --- formatting ----------------------------------------------------------------------------

const integer = new Intl.NumberFormat();

function formatRate(value) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "0";
  if (value < 0.1) return "<0.1";
  return value < 100 ? value.toFixed(1) : integer.format(Math.round(value));
}

function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function formatSeconds(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function formatTime(iso, fallbackSeconds) {
  const date = iso ? new Date(iso) : new Date(fallbackSeconds * 1000);
  if (Number.isNaN(date.getTime())) return iso || "";
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

// --- messages --------------------------------------------------------------------------------

let toastTimer = null;

function toast(text) {
  const node = $("#toast");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    node.hidden = true;
  }, TOAST_SECONDS * 1000);
}

function banner(text) {
  const node = $("#banner");
  node.textContent = text || "";
  node.hidden = !text;
}

/** The `detail` of an error answer as one line. */
function detailText(result) {
  const detail = result.data && result.data.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((error) => error.msg).join("; ");
  return `HTTP ${result.status}`;
}

// --- the API and the token -----------------------------------------------------------------

let tokenWaiters = null; // callers waiting for the token dialog, while it is open

function askToken(refused) {
  if (tokenWaiters === null) {
    tokenWaiters = [];
    const error = $("#token-error");
    error.textContent = refused ? "The bridge refused that token." : "";
    error.hidden = !refused;
    $("#token-input").value = "";
    $("#token-dialog").showModal();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

function tokenEntered(event) {
  event.preventDefault();
  const token = $("#token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#forget-token").hidden = false;
  $("#token-dialog").close();
  const waiters = tokenWaiters || [];
  tokenWaiters = null;
  for (const resolve of waiters) resolve();
}

/** One API call: {status, ok, data}. Asks for the token on a 401 and tries again. */
async function api(method, path, body) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      const current = sessionStorage.getItem(TOKEN_KEY);
      if (current && current !== token) continue; // a new token came in meanwhile
      sessionStorage.removeItem(TOKEN_KEY);
      await askToken(Boolean(token));
      continue;
    }
    const type = response.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await response.json() : null;
    return { status: response.status, ok: response.ok, data };
  }
}

const ruleUrl = (id) => `/rules/${encodeURIComponent(id)}`;

// --- health ----------------------------------------------------------------------------------

function tile(id, state, value, note = "") {
  const node = $(id);
  node.dataset.state = state;
  $(".tile-value", node).textContent = value;
  $(".tile-note", node).textContent = note;
  return node;
}

function renderHealth(ready, stats) {
  const disk = ready.buffer;
  const notReady = ready.not_ready.join(", ");
  tile("#h-ready", ready.ready ? "ok" : "bad", ready.ready ? "Ready" : "Not ready",
    ready.ready ? "" : `${notReady}${ready.error ? `: ${ready.error}` : ""}`);
  tile("#h-mqtt", ready.mqtt ? "ok" : "bad", ready.mqtt ? "Connected" : "Disconnected");
  tile("#h-hstream", ready.hstream ? "ok" : disk ? "warn" : "bad",
    ready.hstream ? "Reachable" : "Unreachable",
    !ready.hstream && disk ? "records wait in the disk buffer" : "");
  tile("#h-dead", ready.dead_letters ? "ok" : "bad", ready.dead_letters ? "Storing" : "Refused",
    ready.dead_letters ? "" : ready.error || "");
  const diskFull = disk && !disk.accepting;
  const paused = diskFull || (stats && stats.buffer.intake_paused);
  tile("#h-intake", paused ? "warn" : "ok", paused ? "Paused" : "Reading",
    paused ? (diskFull ? "the disk buffer is full" : "the memory budget is spent") : "");
  if (stats) {
    tile("#h-received", "info", `${formatRate(stats.received_per_second)} msg/s`,
      `${integer.format(stats.received_total)} total, ${integer.format(stats.unmatched_total)} unmatched`);
    const buffer = stats.buffer;
    const used = buffer.budget_bytes ? buffer.queuing_bytes / buffer.budget_bytes : 0;
    const memory = tile("#h-memory", used > 0.9 ? "warn" : "info",
      `${formatBytes(buffer.queuing_bytes)} of ${formatBytes(buffer.budget_bytes)}`,
      `${integer.format(buffer.queuing_records)} records in flight`);
    $("meter", memory).value = Math.min(used, 1);
  }
  const diskTile = $("#h-disk");
  diskTile.hidden = !disk;
  if (disk) {
    const used = disk.limit_bytes ? disk.bytes_on_disk / disk.limit_bytes : 0;
    const age = disk.oldest_age_seconds;
    const notes = [`backlog ${integer.format(disk.backlog_records)} records (${formatBytes(disk.backlog_bytes)})`];
    if (age !== null && age !== undefined) notes.push(`oldest ${formatSeconds(age)}`);
    if (disk.error) notes.push(disk.error);
    tile("#h-disk", diskFull ? "bad" : used > 0.9 ? "warn" : "info",
      `${formatBytes(disk.bytes_on_disk)} of ${formatBytes(disk.limit_bytes)}`, notes.join(", "));
    $("meter", diskTile).value = Math.min(used, 1);
  }
}

// --- rules table -----------------------------------------------------------------------------

const rows = new Map(); // rule id -> {row, rule, cells, toggle, remove, pending, armed}

function rateCell(label) {
  const rate = el("span", { class: "rate" });
  const total = el("span", { class: "total" });
  return { cell: el("td", { class: "num", "data-label": label }, rate, total), rate, total };
}

function makeRow(id) {
  const entry = { rule: null, pending: false, armed: null };
  entry.name = el("strong");
  entry.kind = el("span", { class: "total" });
  entry.topic = el("code");
  entry.stream = el("code");
  entry.key = el("span", { class: "total" });
  entry.matched = rateCell("Matched/s");
  entry.stored = rateCell("Stored/s");
  entry.dead = rateCell("Dead letters/s");
  entry.toggle = el("input", {
    type: "checkbox",
    class: "switch",
    "aria-label": `Rule ${id} enabled`,
    onchange: () => setEnabled(entry, entry.toggle.checked),
  });
  entry.edit = el("button", { type: "button", text: "Edit", onclick: () => openRuleForm(entry.rule) });
  entry.remove = el("button", { type: "button", class: "danger", text: "Delete", onclick: () => deleteRule(entry) });
  entry.row = el("tr", { "data-rule-id": id },
    el("td", { "data-label": "Rule" }, entry.name, entry.kind),
    el("td", { "data-label": "Topic filter" }, entry.topic),
    el("td", { "data-label": "Stream and key" }, entry.stream, entry.key),
    entry.matched.cell,
    entry.stored.cell,
    entry.dead.cell,
    el("td", { "data-label": "Enabled" }, entry.toggle),
    el("td", { class: "row-actions" }, entry.edit, entry.remove));
  return entry;
}

function setRate(cell, rate, total) {
  cell.rate.textContent = formatRate(rate);
  cell.total.textContent = `${integer.format(total)} total`;
}

function updateRow(entry, rule, stats) {
  entry.rule = rule;
  entry.row.classList.toggle("disabled", !rule.enabled);
  entry.name.textContent = rule.id;
  entry.kind.textContent = `${rule.payload}, QoS ${rule.qos}`;
  entry.topic.textContent = rule.topic;
  entry.stream.textContent = rule.stream;
  entry.key.textContent = rule.key ? `key ${rule.key}` : "no key";
  if (!entry.pending) entry.toggle.checked = rule.enabled;
  const none = { matched_total: 0, stored_total: 0, dead_lettered_total: 0 };
  const s = stats || none;
  setRate(entry.matched, s.matched_per_second, s.matched_total);
  setRate(entry.stored, s.stored_per_second, s.stored_total);
  setRate(entry.dead, s.dead_lettered_per_second, s.dead_lettered_total);
  entry.dead.cell.classList.toggle("alert", s.dead_lettered_total > 0);
}

function renderRules(rules, stats) {
  const byId = new Map((stats ? stats.rules : []).map((row) => [row.id, row]));
  const body = $("#rules-table tbody");
  const seen = new Set();
  rules.forEach((rule, index) => {
    seen.add(rule.id);
    let entry = rows.get(rule.id);
    if (!entry) {
      entry = makeRow(rule.id);
      rows.set(rule.id, entry);
    }
    updateRow(entry, rule, byId.get(rule.id));
    if (body.children[index] !== entry.row) body.insertBefore(entry.row, body.children[index] || null);
  });
  for (const [id, entry] of rows) {
    if (!seen.has(id)) {
      entry.row.remove();
      rows.delete(id);
    }
  }
  $("#rules-empty").hidden = rules.length > 0;
  $("#rules-table").parentElement.hidden = rules.length === 0;
  if (stats && stats.interval_seconds) $("#rates-interval").textContent = formatSeconds(stats.interval_seconds);
}

async function setEnabled(entry, enabled) {
  entry.pending = true;
  entry.toggle.disabled = true;
  try {
    const rule = { ...entry.rule, enabled };
    const result = await api("PUT", ruleUrl(rule.id), rule);
    if (result.ok || result.status === 502) {
      toast(`Rule ${rule.id} ${enabled ? "enabled" : "disabled"}.`);
      if (result.status === 502) banner(detailText(result));
    } else {
      entry.toggle.checked = !enabled;
      toast(`Rule ${rule.id} not changed: ${detailText(result)}`);
    }
  } finally {
    entry.pending = false;
    entry.toggle.disabled = false;
  }
  await refresh();
}

function disarm(entry) {
  clearTimeout(entry.armed);
  entry.armed = null;
  entry.remove.textContent = "Delete";
  entry.remove.classList.remove("armed");
}

async function deleteRule(entry) {
  if (entry.armed === null) {
    // Two clicks: the first arms the button for a few seconds, the second deletes.
    entry.remove.textContent = "Confirm delete";
    entry.remove.classList.add("armed");
    entry.armed = setTimeout(() => disarm(entry), DELETE_ARM_SECONDS * 1000);
    return;
  }
  disarm(entry);
  const id = entry.rule.id;
  const result = await api("DELETE", ruleUrl(id));
  if (result.ok || result.status === 502) toast(`Rule ${id} deleted.`);
  else toast(`Rule ${id} not deleted: ${detailText(result)}`);
  if (result.status === 502) banner(detailText(result));
  await refresh();
}

// --- forms and their errors ------------------------------------------------------------------

function clearErrors(form) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
}

function addError(form, field, message) {
  const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`)
    || form.querySelector('[data-error-for="form"]');
  slot.append(el("span", { text: message }));
  const input = form.elements[field];
  if (input instanceof Element) input.setAttribute("aria-invalid", "true");
}

/** An error answer shown in the form: a 422's messages next to the fields `loc` names. */
function showErrors(form, result, conflictField = "id") {
  const detail = result.data && result.data.detail;
  if (result.status === 422 && Array.isArray(detail)) {
    for (const error of detail) {
      const loc = Array.isArray(error.loc) ? error.loc : [];
      const field = loc[0] === "body" && loc.length > 1 ? String(loc[1]) : "form";
      addError(form, field, error.msg);
    }
  } else if (result.status === 409) {
    addError(form, conflictField, detailText(result));
  } else {
    addError(form, "form", detailText(result));
  }
}

// --- rule form -------------------------------------------------------------------------------

function openRuleForm(rule) {
  const form = $("#rule-form");
  const fields = form.elements;
  clearErrors(form);
  form.dataset.mode = rule ? "edit" : "create";
  $("#rule-form-title").textContent = rule ? `Edit rule ${rule.id}` : "New rule";
  fields.id.value = rule ? rule.id : "";
  fields.id.readOnly = Boolean(rule); // renaming is creating the new rule and deleting the old
  fields.topic.value = rule ? rule.topic : "";
  fields.stream.value = rule ? rule.stream : "";
  fields.key.value = rule ? rule.key : "";
  fields.payload.value = rule ? rule.payload : "raw";
  fields.qos.value = String(rule ? rule.qos : 1);
  fields.enabled.checked = rule ? rule.enabled : true;
  form.hidden = false;
  (rule ? fields.topic : fields.id).focus();
}

async function saveRule(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const fields = form.elements;
  clearErrors(form);
  const rule = {
    id: fields.id.value.trim(),
    topic: fields.topic.value,
    stream: fields.stream.value,
    key: fields.key.value,
    payload: fields.payload.value,
    qos: Number(fields.qos.value),
    enabled: fields.enabled.checked,
  };
  const creating = form.dataset.mode !== "edit";
  const result = creating ? await api("POST", "/rules", rule) : await api("PUT", ruleUrl(rule.id), rule);
  if (result.ok || result.status === 502) {
    form.hidden = true;
    toast(`Rule ${rule.id} ${creating ? "created" : "saved"}.`);
    if (result.status === 502) banner(detailText(result));
    await refresh();
    return;
  }
  showErrors(form, result);
}

// --- dry run ---------------------------------------------------------------------------------

function payloadText(record) {
  return record.payload_encoding === "json"
    ? JSON.stringify(record.payload, null, 2)
    : record.payload_encoding === "base64" ? `base64: ${record.payload}` : record.payload;
}

function routeItem(route) {
  const head = route.dead_letter
    ? el("p", { class: "route-head" },
      el("strong", { text: route.rule_id }), " → dead letter: ",
      el("span", { class: "badge bad", text: route.reason }),
      route.target ? el("span", { text: " meant for " }) : null,
      route.target ? el("code", { text: route.target }) : null)
    : el("p", { class: "route-head" },
      el("strong", { text: route.rule_id }), " → stream ", el("code", { text: route.stream }),
      route.key ? el("span", { text: ", key " }) : el("span", { text: ", no key" }),
      route.key ? el("code", { text: route.key }) : null);
  const attributes = Object.entries(route.record.attributes);
  return el("li", { class: `route ${route.dead_letter ? "dead" : "ok"}` },
    head,
    el("p", { class: "muted small", text: `${route.record.flag} record${route.dead_letter ? ` in ${route.stream}` : ""}` }),
    el("pre", { class: "payload", text: payloadText(route.record) }),
    el("details", {},
      el("summary", { text: `Attributes (${attributes.length})` }),
      el("dl", {}, ...attributes.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]))));
}

async function dryRun(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const fields = form.elements;
  clearErrors(form);
  const output = $("#dry-run-result");
  const result = await api("POST", "/rules/test", {
    topic: fields.topic.value,
    payload: fields.payload.value,
    qos: Number(fields.qos.value),
  });
  output.replaceChildren();
  if (!result.ok) {
    showErrors(form, result);
    return;
  }
  const { matched, routes } = result.data;
  if (matched.length === 0) {
    output.append(el("p", { class: "muted", text: "No enabled rule matches this topic: the message would be acknowledged and not stored." }));
    return;
  }
  output.append(el("ol", { class: "routes" }, ...routes.map(routeItem)));
}

// --- dead letters ----------------------------------------------------------------------------

function deadLetterRow(letter) {
  const size = letter.truncated && letter.original_bytes !== null
    ? `${formatBytes(letter.payload_bytes)} of ${formatBytes(letter.original_bytes)}`
    : formatBytes(letter.payload_bytes);
  const preview = letter.preview_encoding === "base64" ? `base64: ${letter.payload_preview}` : letter.payload_preview;
  return el("tr", { "data-record-id": letter.id },
    el("td", { "data-label": "Time", title: letter.time || "" }, formatTime(letter.time, letter.publish_time)),
    el("td", { "data-label": "Rule and topic" },
      el("strong", { text: letter.rule || "–" }), " ", el("code", { text: letter.topic || "–" })),
    el("td", { "data-label": "Reason" },
      el("span", { class: "badge bad", text: letter.reason || "unknown" }),
      letter.error ? el("span", { class: "total", text: letter.error }) : null,
      letter.stream ? el("span", { class: "total", text: `meant for ${letter.stream}` }) : null),
    el("td", { class: "num", "data-label": "Size" }, size),
    el("td", { "data-label": "Payload" },
      el("code", { class: "preview", text: preview + (letter.preview_truncated ? " …" : "") })));
}

async function refreshDeadLetters() {
  const limit = $("#dead-letters-limit").value;
  const result = await api("GET", `/dead-letters?limit=${encodeURIComponent(limit)}`);
  const about = $("#dead-letters-about");
  if (!result.ok) {
    about.textContent = `Could not read the dead letters: ${detailText(result)}`;
    return;
  }
  const { stream, records } = result.data;
  about.replaceChildren("The latest records of the dead-letter stream ", el("code", { text: stream }), ", newest first.");
  $("#dead-letters-table tbody").replaceChildren(...records.map(deadLetterRow));
  $("#dead-letters-table").parentElement.hidden = records.length === 0;
  $("#dead-letters-empty").hidden = records.length > 0;
}

// --- database sources and replicas -----------------------------------------------------------

const STATE_CLASS = { streaming: "good", snapshot: "good", standby: "muted", starting: "muted", disabled: "muted", error: "bad" };

function sourceRow(source) {
  const status = source.status || {};
  const state = status.state || "unknown";
  const changes = Object.values(status.changes || {}).reduce((sum, n) => sum + n, 0);
  const lag = [];
  if (status.lag_bytes !== null && status.lag_bytes !== undefined) lag.push(formatBytes(status.lag_bytes));
  if (status.lag_seconds !== null && status.lag_seconds !== undefined) lag.push(formatSeconds(status.lag_seconds));
  return el("tr", { "data-source-id": source.id },
    el("td", { "data-label": "Source" }, el("strong", { text: source.id }), " ",
      el("span", { class: "total", text: `${source.kind} → ${source.stream}` })),
    el("td", { "data-label": "Tables" }, el("code", { text: (source.tables || []).join(", ") })),
    el("td", { "data-label": "State" }, el("span", { class: `badge ${STATE_CLASS[state] || "muted"}`, text: state })),
    el("td", { class: "num", "data-label": "Changes" }, integer.format(changes)),
    el("td", { class: "num", "data-label": "Lag" }, lag.join(", ") || "–"),
    el("td", { "data-label": "Problem" },
      status.last_error ? el("span", { class: "source-error", text: status.last_error }) : null,
      status.setting ? el("span", { class: "total", text: `change: ${status.setting}` }) : null,
      ...(status.notes || []).map((note) => el("span", { class: "total", text: note }))));
}

function memberRow(member) {
  const status = member.status || "unknown";
  const ready = member.ready === true ? "ready" : member.ready === false ? "not ready" : "–";
  return el("tr", { "data-replica-id": member.id },
    el("td", { "data-label": "Replica" }, el("strong", { text: member.id }),
      member.api ? el("span", { class: "total", text: member.api }) : null),
    el("td", { "data-label": "Status" }, el("span", { class: `badge ${status === "alive" ? "good" : "bad"}`, text: status })),
    el("td", { class: "num", "data-label": "Config version" }, member.version === undefined || member.version === null ? "–" : String(member.version)),
    el("td", { "data-label": "Ready" }, member.paused ? `${ready}, paused` : ready),
    el("td", { "data-label": "Runs" }, el("code", { text: (member.sources || []).join(", ") || "–" })));
}

async function refreshSources() {
  const [sources, cluster] = await Promise.all([api("GET", "/sources"), api("GET", "/cluster")]);
  if (sources.ok) {
    $("#sources-table tbody").replaceChildren(...sources.data.map(sourceRow));
    $("#sources-table").parentElement.hidden = sources.data.length === 0;
    $("#sources-empty").hidden = sources.data.length > 0;
  }
  if (cluster.ok) $("#cluster-table tbody").replaceChildren(...cluster.data.members.map(memberRow));
}

// --- refresh loop ----------------------------------------------------------------------------

async function refresh() {
  try {
    const [ready, stats, rules] = await Promise.all([api("GET", "/ready"), api("GET", "/stats"), api("GET", "/rules")]);
    renderHealth(ready.data, stats.ok ? stats.data : null);
    if (rules.ok) renderRules(rules.data, stats.ok ? stats.data : null);
    banner(null);
    $("#updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    banner(`The bridge does not answer (${error.message}); trying again every ${REFRESH_SECONDS} s.`);
  }
}

/** Run `task` now and then every `seconds`, one run at a time, skipped while the tab is hidden. */
function every(seconds, task) {
  const run = async () => {
    try {
      if (!document.hidden) await task();
    } finally {
      setTimeout(run, seconds * 1000);
    }
  };
  run();
}

function start() {
  $("#token-form").addEventListener("submit", tokenEntered);
  $("#token-dialog").addEventListener("cancel", (event) => event.preventDefault()); // no Escape
  $("#forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
  $("#forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    window.location.reload();
  });
  $("#new-rule").addEventListener("click", () => openRuleForm(null));
  $("#rule-cancel").addEventListener("click", () => {
    $("#rule-form").hidden = true;
  });
  $("#rule-form").addEventListener("submit", saveRule);
  $("#dry-run-form").addEventListener("submit", dryRun);
  $("#dead-letters-refresh").addEventListener("click", () => refreshDeadLetters().catch(() => {}));
  $("#dead-letters-limit").addEventListener("change", () => refreshDeadLetters().catch(() => {}));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  every(REFRESH_SECONDS, refresh);
  every(DEAD_LETTER_SECONDS, () => refreshDeadLetters().catch(() => {}));
  every(REFRESH_SECONDS, () => refreshSources().catch(() => {}));
}

start();
