// Nexus web console: a client of the scheduler's v1 API, nothing more. Every request carries the
// user's token (session storage of this tab) and is authorized by the server like the CLI's.
// Data is only ever inserted with textContent (no innerHTML), and only this origin is called.

const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "SCHEDULING_FAILED", "DEADLINE_EXCEEDED"]);
const STAGES = ["BUFFERED", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "SCHEDULING_FAILED", "DEADLINE_EXCEEDED"];
const PAGE = 50;
const MAX_READS = 5; // calls per page the runs page makes at most
const LIVE_MS = 3000;
const TOKEN_KEY = "nexus.token";

const $ = (sel) => document.querySelector(sel);
let timer = null; // the current view's refresh timer
let view = 0; // bumped on every navigation: late answers of an old view are dropped

// --- DOM helpers ---------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const stage = (s) => el("span", { class: `stage ${s}`, text: s, "data-stage": s });
// Runs executed outside Nexus and registered through the external-runs API carry this mark.
// A run's latest progress report: a bar when it gave a fraction, its message, when it said so.
function progressView(p, withMessage) {
  if (!p) return "";
  const pct = typeof p.fraction === "number" ? Math.round(Math.min(1, Math.max(0, p.fraction)) * 100) : null;
  const parts = [];
  if (pct !== null) parts.push(el("progress", { max: "100", value: String(pct), "aria-label": `${pct}% done` }), ` ${pct}%`);
  if (withMessage && p.message) parts.push(` ${p.message}`);
  const at = p.reported_at || p.reportedAt;
  return el("span", { class: "run-progress", title: at ? `reported ${at}` : null }, ...parts);
}
const externalMark = (on) => (on ? el("span", { class: "external-mark", title: "executed outside Nexus, registered through the external-runs API", text: "external" }) : "");
const when = (t) => (t ? new Date(t).toLocaleString() : "");
// With milliseconds: the stage changes of a quick run are a few milliseconds apart.
const PRECISE = { year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3 };
const precisely = (t) => (t ? new Date(t).toLocaleString(undefined, PRECISE) : "");
function duration(from, to) {
  if (!from) return "";
  const ms = (to ? new Date(to) : new Date()) - new Date(from);
  if (!(ms >= 0)) return "";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}
function banner(text, kind = "error") {
  const b = $("#banner");
  b.hidden = !text;
  b.className = `banner ${kind === "info" ? "info" : ""}`;
  b.textContent = text || "";
}

// --- API ----------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}
function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}
async function api(path, init = {}) {
  const headers = { Accept: "application/json", ...(init.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  let r;
  try {
    r = await fetch(path, { ...init, headers, credentials: "omit", cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, `the scheduler cannot be reached (${e.message})`);
  }
  const text = await r.text();
  if (!r.ok) {
    let msg = text;
    try {
      const p = JSON.parse(text);
      msg = p.detail || p.title || text;
    } catch (_) { /* text/plain error */ }
    if (r.status === 401) askToken(msg);
    throw new ApiError(r.status, `${r.status}: ${msg || r.statusText}`);
  }
  // Some answers are text (a cancel's acknowledgement): only JSON is parsed.
  if (!text) return null;
  return /json/.test(r.headers.get("Content-Type") || "") ? JSON.parse(text) : text;
}
// Shows a failed call: a 401 already opened the token dialog (its banner says so).
function showError(e) {
  if (e.status !== 401) banner(e.message);
}
const enc = encodeURIComponent;

// --- token --------------------------------------------------------------------------------------
function askToken(why) {
  banner(`Sign in: ${why || "this server needs a token"}. Use the Token button.`, "info");
  const d = $("#token-dialog");
  if (!d.open) d.showModal();
}
function setupToken() {
  const d = $("#token-dialog");
  $("#token-button").addEventListener("click", () => {
    $("#token-input").value = "";
    d.showModal();
  });
  $("#token-form").addEventListener("submit", () => {
    const t = $("#token-input").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    banner("");
    route();
  });
  $("#token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    d.close();
    route();
  });
}
function showWho() {
  $("#who").textContent = token() ? "token set" : "";
}

// --- routing ------------------------------------------------------------------------------------
function parseHash() {
  const h = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = h.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query) };
}
function route() {
  view += 1;
  if (timer) clearTimeout(timer);
  timer = null;
  showWho();
  const { parts, params } = parseHash();
  const name = parts[0] || "runs";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === name || (name === "run" && a.dataset.nav === "runs"));
  const main = $("#main");
  main.replaceChildren();
  if (name === "run" && parts.length === 3) return runView(main, parts[1], parts[2], view);
  if (name === "algorithms") return algorithmsView(main, view);
  if (name === "shards") return shardsView(main, view);
  return runsView(main, params, view);
}
const current = (v) => v === view;
function later(v, fn, ms) {
  if (!current(v)) return;
  timer = setTimeout(() => current(v) && fn(), ms);
}

// --- runs ---------------------------------------------------------------------------------------
const FILTERS = ["algorithm", "stage", "tag", "shard", "parent", "root", "from", "to"];

async function runsView(main, params, v) {
  main.append(el("h1", { text: "Runs" }));
  const algorithms = await api("/algorithm/v1/algorithms").then((a) => a.algorithms.map((x) => x.name)).catch(() => []);
  const field = (name, input) => el("label", {}, name, input);
  const form = el("form", { class: "filters", id: "filters" },
    field("algorithm", el("select", { name: "algorithm" }, el("option", { value: "", text: "any" }),
      algorithms.map((a) => el("option", { value: a, text: a, selected: params.get("algorithm") === a })))),
    field("stage", el("select", { name: "stage" }, el("option", { value: "", text: "any" }),
      STAGES.map((s) => el("option", { value: s, text: s, selected: params.get("stage") === s })))),
    field("tag", el("input", { name: "tag", value: params.get("tag") || "", size: 14 })),
    field("shard", el("input", { name: "shard", value: params.get("shard") || "", size: 10 })),
    field("parent", el("input", { name: "parent", value: params.get("parent") || "", size: 12, placeholder: "run id" })),
    field("root", el("input", { name: "root", value: params.get("root") || "", size: 12, placeholder: "run id" })),
    field("from", el("input", { name: "from", type: "datetime-local", value: params.get("from") || "" })),
    field("to", el("input", { name: "to", type: "datetime-local", value: params.get("to") || "" })),
    el("button", { type: "submit", text: "Filter" }),
    el("label", { class: "inline" }, el("input", { type: "checkbox", id: "live", checked: params.get("live") !== "0" }), "live"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const f of FILTERS) {
      const val = form.elements[f].value.trim();
      if (val) q.set(f, val);
    }
    if (!$("#live").checked) q.set("live", "0");
    location.hash = `#/runs?${q}`;
  });
  main.append(form);
  const tbody = el("tbody", { id: "runs-body" });
  const table = el("table", { id: "runs" },
    el("thead", {}, el("tr", {}, ["run", "algorithm", "stage", "tag", "submitted", "duration", "attempts", "shard"].map((h) => el("th", { text: h })))),
    tbody);
  const status = el("p", { class: "muted", id: "runs-status", role: "status" });
  const more = el("button", { type: "button", class: "secondary more", id: "more", text: "Load more", hidden: true });
  main.append(table, status, more);

  const query = new URLSearchParams();
  for (const f of FILTERS) {
    let val = params.get(f);
    if (!val) continue;
    if ((f === "from" || f === "to") && !/Z|[+-]\d\d:?\d\d$/.test(val)) val = new Date(val).toISOString();
    query.set(f, val);
  }
  const rows = new Map(); // id -> tr
  let cursor = null;
  const row = (r) => el("tr", { "data-id": r.requestId },
    el("td", { class: "id" }, el("a", { href: `#/run/${enc(r.algorithmName)}/${enc(r.requestId)}`, text: r.requestId })),
    el("td", { text: r.algorithmName }),
    el("td", { title: r.runErrorMessage || null }, stage(r.status), " ", externalMark(r.external), TERMINAL.has(r.status) ? "" : progressView(r.progress, false)),
    el("td", { text: r.tag || "" }),
    el("td", { text: when(r.submittedAt) }),
    el("td", { text: duration(r.startedAt || r.submittedAt, r.finishedAt) }),
    el("td", { text: r.attempts ?? "" }),
    el("td", { text: r.shard || "" }));
  function put(runs, atTop) {
    const fresh = [];
    for (const r of runs) {
      const tr = row(r);
      const old = rows.get(r.requestId);
      if (old) old.replaceWith(tr);
      else fresh.push(tr);
      rows.set(r.requestId, tr);
    }
    // `runs` is newest first: on top, the block keeps that order above the known rows.
    if (atTop) tbody.prepend(...fresh);
    else tbody.append(...fresh);
    showStatus();
  }
  function showStatus() {
    if (rows.size) status.textContent = `${rows.size} run${rows.size === 1 ? "" : "s"} shown`;
    else status.textContent = cursor ? "No run found so far: Load more searches further." : "No run matches.";
  }
  function page(after) {
    const q = new URLSearchParams(query);
    q.set("limit", PAGE);
    if (after) q.set("cursor", after);
    return api(`/algorithm/v1/runs?${q}`);
  }
  // Reads from `after` until a page's worth of runs or the end, in at most MAX_READS calls: a
  // store may answer short pages, even empty ones with a cursor, to bound its work per call.
  async function fill(after) {
    const runs = [];
    let next = after;
    let reads = 0;
    do {
      const p = await page(next);
      runs.push(...p.runs);
      next = p.nextCursor || null;
      reads += 1;
    } while (next && runs.length < PAGE && reads < MAX_READS);
    return { runs, next };
  }
  let loaded = false; // the first page is shown (until then, a refresh loads it)
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const p = await fill(cursor);
      if (!current(v)) return;
      cursor = p.next;
      more.hidden = !cursor;
      put(p.runs, false);
    } catch (e) {
      showError(e);
    } finally {
      more.disabled = false;
    }
  });
  let inflight = false; // one refresh at a time (ticking "live" during one must not start another loop)
  async function refresh() {
    if (inflight) return;
    inflight = true;
    try {
      // Newest first: on a refresh, new runs go on top and known ones are updated in place.
      if (!loaded) {
        const p = await fill(null);
        if (!current(v)) return;
        cursor = p.next;
        more.hidden = !cursor;
        loaded = true;
        put(p.runs, false);
      } else {
        const p = await page(null);
        if (!current(v)) return;
        put(p.runs, true);
      }
      banner("");
    } catch (e) {
      if (current(v)) showError(e);
    } finally {
      inflight = false;
    }
    if ($("#live")?.checked) later(v, refresh, LIVE_MS);
  }
  // Ticking "live" takes effect at once (the URL keeps it for the next filter).
  $("#live").addEventListener("change", (e) => {
    if (timer) clearTimeout(timer);
    timer = null;
    if (e.target.checked) later(v, refresh, 0);
  });
  await refresh();
}

// --- one run ------------------------------------------------------------------------------------
const RUN_LIVE_MS = 2000;
const LOG_TAIL_BYTES = 64 * 1024;
const LOG_CHECKS = 5;

async function runView(main, alg, id, v) {
  const base = `/algorithm/v1`;
  const path = `${enc(alg)}/requests/${enc(id)}`;
  const title = el("h1", {}, `${alg} / `, el("span", { class: "id", text: id }), " ", el("span", { id: "run-stage", role: "status" }));
  const actions = el("div", { class: "row" });
  const liveNote = el("span", { class: "muted", id: "run-live" });
  const facts = el("dl", { class: "facts", id: "facts" });
  const links = el("div", { class: "row", id: "links" });
  const errorBox = el("pre", { id: "error", hidden: true });
  const why = el("section", { id: "explanation", "aria-labelledby": "why-h" });
  const timeline = el("section", { id: "timeline", "aria-labelledby": "timeline-h" });
  const logs = el("section", { id: "logs", "aria-labelledby": "logs-h" });
  const children = el("div", { id: "children" });
  main.append(title, actions,
    el("h2", { id: "why-h", text: "Why is it in this stage" }), why,
    el("h2", { text: "Run" }), facts, links, errorBox,
    el("h2", { id: "timeline-h", text: "Timeline" }), timeline,
    el("h2", { id: "children-h", text: "Child runs" }), children,
    el("h2", { id: "logs-h", text: "Logs" }), logs);

  const cancel = el("button", { type: "button", class: "danger", id: "cancel", text: "Cancel run", hidden: true });
  actions.append(cancel, el("a", { href: `#/runs?root=${enc(id)}`, text: "runs of this tree" }), liveNote);
  cancel.addEventListener("click", async () => {
    if (!confirm(`Cancel run ${id}?`)) return;
    cancel.disabled = true;
    try {
      await api(`${base}/cancel/${path}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ initiator: "web console", reason: "cancelled from the web console", cancellationPolicy: "Background" }),
      });
      banner(`Cancellation of ${id} requested.`, "info");
      reload();
    } catch (e) {
      showError(e);
    } finally {
      cancel.disabled = false;
    }
  });

  let shownLogs = null; // the logs URL whose text is shown
  let logChecks = 0; // reads for the logs after the run ended
  function reload() {
    if (timer) clearTimeout(timer);
    timer = null;
    load();
  }
  async function load() {
    let m, x;
    try {
      // Metadata (facts and signed links) and the explanation (which carries the timeline).
      [m, x] = await Promise.all([api(`${base}/metadata/${path}`), api(`${base}/explain/${path}`)]);
    } catch (e) {
      if (!current(v)) return;
      if (e.status === 404) banner(`No run ${id} of algorithm ${alg}.`);
      else showError(e);
      // A scheduler restarting or a lost connection: keep trying, as the runs page does.
      if (e.status !== 404 && e.status !== 401 && e.status !== 403) later(v, load, RUN_LIVE_MS * 2);
      return;
    }
    if (!current(v)) return;
    const done = TERMINAL.has(m.lifecycle_stage);
    $("#run-stage").replaceChildren(stage(m.lifecycle_stage), " ", externalMark(m.external));
    liveNote.textContent = done ? "final" : `updating every ${RUN_LIVE_MS / 1000} s`;
    showFacts(m);
    showExplanation(x);
    showTimeline(x.timeline || []);
    if (!done) {
      shownLogs = null;
      followLogs();
    } else if (m.logs_uri !== shownLogs) {
      shownLogs = m.logs_uri || null;
      showLogs(shownLogs);
    }
    cancel.hidden = done;
    await tree(children, alg, id, v);
    // The output is stored when the process exits, which can be just after the run ended (a
    // cancelled or completed run's process is still stopping): look a few more times.
    if (done && !m.logs_uri && logChecks < LOG_CHECKS) logChecks += 1;
    else if (done) logChecks = LOG_CHECKS;
    if (!done || logChecks < LOG_CHECKS) later(v, load, RUN_LIVE_MS);
    else if (!m.logs_uri) logs.replaceChildren(el("p", { class: "muted", id: "logs-none", text: "No output was stored for this run." }));
  }

  function showFacts(m) {
    const fact = (k, val) => (val === undefined || val === null || val === "" ? [] : [el("dt", { text: k }), el("dd", {}, val)]);
    facts.replaceChildren(
      ...fact("stage", stage(m.lifecycle_stage)),
      ...fact("submitted", when(m.received_at)),
      ...fact("started", when(m.started_at)),
      ...fact("finished", when(m.finished_at)),
      ...(m.started_at || m.finished_at
        ? fact("duration", duration(m.started_at || m.received_at, m.finished_at))
        : fact("waiting for", duration(m.received_at, null))),
      ...fact("progress", m.progress ? progressView(m.progress, true) : undefined),
      ...fact("attempts", m.attempts),
      ...fact("workgroup", m.workgroup),
      ...fact("shard", m.shard),
      ...fact("tag", m.tag),
      ...fact("parent", m.parent ? el("a", { href: `#/run/${enc(m.parent.algorithmName)}/${enc(m.parent.requestId)}`, id: "parent-link", text: `${m.parent.algorithmName} / ${m.parent.requestId}` }) : undefined),
      ...fact("root", m.root && m.root !== id ? el("span", { class: "id", text: m.root }) : undefined),
      ...fact("depth", m.depth),
      ...fact("executor", m.job_uid),
      ...fact("executed", m.external ? "outside Nexus (external run)" : undefined),
      ...fact("payload size", m.payload_size !== undefined ? `${m.payload_size} bytes` : undefined));
    // Signed URLs: they carry their own credential, so plain links work.
    links.replaceChildren(
      m.payload_uri ? el("a", { href: m.payload_uri, id: "payload-link", target: "_blank", rel: "noopener", text: "payload" }) : "",
      m.result_uri ? el("a", { href: m.result_uri, id: "result-link", target: "_blank", rel: "noopener", text: "result" }) : "",
      m.logs_uri ? el("a", { href: m.logs_uri, id: "logs-link", target: "_blank", rel: "noopener", text: "logs" }) : "");
    errorBox.hidden = !m.algorithm_failure_cause;
    errorBox.textContent = m.algorithm_failure_cause ? `${m.algorithm_failure_cause}\n\n${m.algorithm_failure_details || ""}` : "";
  }

  function showExplanation(x) {
    const parts = [el("p", { id: "why-summary", text: x.summary })];
    if (x.reasons && x.reasons.length) parts.push(el("ul", { id: "why-reasons" }, x.reasons.map((r) => el("li", { text: r }))));
    const kv = [];
    const add = (k, val) => kv.push(el("dt", { text: k }), el("dd", { text: String(val) }));
    if (x.since) add("in this stage since", when(x.since));
    if (x.queue) {
      add("queue", `${x.queue.part} of shard ${x.queue.shard} on ${x.queue.scheduler}`);
      add("position", `${x.queue.position} of ${x.queue.laneLength}`);
      add("dispatch attempts", x.queue.attempt);
      if (x.queue.retryInMs !== undefined) add("next attempt in", `${(x.queue.retryInMs / 1000).toFixed(1)} s`);
    }
    if (x.lane) {
      add("lane", `${x.lane.length} waiting for shard ${x.lane.shard}`);
      add("dispatch rate", `${x.lane.ratePerSecond.toFixed(1)}/s of ${x.lane.ceilingPerSecond.toFixed(1)}/s${x.lane.slowedDown ? " (slowed down by the shard)" : ""}, ${x.lane.schedulers} scheduler(s)`);
      if (x.lane.shardDownForMs !== undefined) add("shard unreachable, lane paused for", `${(x.lane.shardDownForMs / 1000).toFixed(1)} s`);
    }
    if (x.workgroupMaxConcurrentRuns !== undefined) add("workgroup limit", `${x.workgroupMaxConcurrentRuns} run(s) at once per receiver`);
    if (kv.length) parts.push(el("dl", { class: "facts" }, kv));
    why.replaceChildren(...parts);
  }

  function showTimeline(entries) {
    if (!entries.length) {
      timeline.replaceChildren(el("p", { class: "muted", text: "No stage change recorded." }));
      return;
    }
    timeline.replaceChildren(el("table", { id: "timeline-table" },
      el("caption", { class: "visually-hidden", text: "Stage changes, oldest first" }),
      el("thead", {}, el("tr", {}, ["time", "change", "by", "cause"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, entries.map((t) => el("tr", { "data-to": t.to },
        el("td", { text: precisely(t.at), title: t.at }),
        el("td", {}, stage(t.from), " → ", stage(t.to)),
        el("td", { text: t.by }),
        el("td", { text: t.cause }))))));
  }

  // The output is stored when the process ends (this API has no live log stream): until then
  // there is nothing to show. Signed URLs of this origin are fetched and their tail shown.
  // Live: the run's output streamed as it writes it (`follow=true`: the scheduler sends new bytes
  // until the run ended and its last output is stored). One stream per page; it is aborted when
  // the page is left, and the stored output replaces it once the run has ended.
  let following = false;
  async function followLogs() {
    if (following) return;
    following = true;
    const ctl = new AbortController();
    const leave = setInterval(() => { if (!current(v)) ctl.abort(); }, 1000);
    const headers = { Accept: "text/plain" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const note = el("p", { class: "muted", id: "logs-live", text: "live: waiting for the run's first output…" });
    const pre = el("pre", { id: "logs-text", tabindex: "0", "aria-label": "run output" });
    logs.replaceChildren(note, pre);
    let text = "";
    try {
      const r = await fetch(`${base}/logs/${path}?follow=true`, { headers, credentials: "omit", cache: "no-store", signal: ctl.signal });
      if (!r.ok) throw new Error(`${r.status}: ${(await r.text()).slice(0, 300)}`);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += dec.decode(value, { stream: true });
        if (text.length > LOG_TAIL_BYTES) text = `…\n${text.slice(-LOG_TAIL_BYTES)}`;
        note.textContent = "live: the output as the run writes it";
        pre.textContent = text;
      }
    } catch (e) {
      if (current(v) && e.name !== "AbortError") {
        logs.replaceChildren(el("p", { class: "muted", id: "logs-none", text: `The live output could not be read (${e.message}).` }));
      }
    } finally {
      clearInterval(leave);
      following = false;
    }
  }
  async function showLogs(uri) {
    if (!uri) {
      logs.replaceChildren(el("p", { class: "muted", id: "logs-none", text: "The run's output is stored when its process ends; nothing yet." }));
      return;
    }
    let same = false;
    try {
      same = new URL(uri, location.href).origin === location.origin;
    } catch (_) { /* not a URL: link only */ }
    if (!same) {
      logs.replaceChildren(el("p", {}, el("a", { href: uri, target: "_blank", rel: "noopener", text: "open the logs" })));
      return;
    }
    try {
      // No Authorization header: the signature is the credential.
      const r = await fetch(uri, { credentials: "omit", cache: "no-store" });
      if (!r.ok) throw new Error(`${r.status}`);
      const text = await r.text();
      if (!current(v) || uri !== shownLogs) return;
      const tail = text.length > LOG_TAIL_BYTES ? `…\n${text.slice(-LOG_TAIL_BYTES)}` : text;
      logs.replaceChildren(el("pre", { id: "logs-text", tabindex: "0", "aria-label": "run output" , text: tail }));
    } catch (e) {
      if (current(v)) logs.replaceChildren(el("p", {}, `The logs could not be read here (${e.message}): `, el("a", { href: uri, target: "_blank", rel: "noopener", text: "open them" })));
    }
  }

  await load();
}

// The children of a run, each expandable into its own children (loaded when opened). A refresh
// updates the list in place, so subtrees the user opened stay open.
async function tree(container, alg, id, v) {
  let kids;
  try {
    kids = await api(`/algorithm/v1/children/${enc(alg)}/requests/${enc(id)}`);
  } catch (e) {
    if (current(v)) container.replaceChildren(el("p", { class: "muted", text: e.message }));
    return;
  }
  if (!current(v)) return;
  if (!kids.length) {
    container.replaceChildren(el("p", { class: "muted", text: "none" }));
    return;
  }
  let ul = container.querySelector(":scope > ul.tree");
  if (!ul) {
    ul = el("ul", { class: "tree", "aria-label": `child runs of ${id}` });
    container.replaceChildren(ul);
  }
  for (const k of kids) {
    const known = [...ul.children].find((li) => li.dataset.id === k.requestId);
    if (known) {
      known.querySelector(":scope > .stage").replaceWith(stage(k.status));
      continue;
    }
    const sub = el("div");
    const open = el("button", { type: "button", class: "secondary small", text: "children", "aria-label": `children of ${k.requestId}` });
    open.addEventListener("click", () => {
      open.remove();
      tree(sub, k.algorithmName, k.requestId, v);
    });
    ul.append(el("li", { "data-id": k.requestId },
      el("a", { href: `#/run/${enc(k.algorithmName)}/${enc(k.requestId)}`, text: `${k.algorithmName} / ${k.requestId}` }), " ",
      stage(k.status), " ", open, sub));
  }
}

// --- algorithms ---------------------------------------------------------------------------------
async function algorithmsView(main, v) {
  main.append(el("h1", { text: "Algorithms" }));
  let a;
  try {
    a = await api("/algorithm/v1/algorithms");
  } catch (e) {
    showError(e);
    return;
  }
  if (!current(v)) return;
  main.append(el("table", { id: "algorithms" },
    el("thead", {}, el("tr", {}, ["algorithm", "workgroup", "shard", "runs as", "deadline", "retries", "you may"].map((h) => el("th", { text: h })))),
    el("tbody", {}, a.algorithms.map((x) => el("tr", { "data-name": x.name },
      el("td", {}, el("a", { href: `#/runs?algorithm=${enc(x.name)}`, text: x.name })),
      el("td", { text: x.workgroup }),
      el("td", { text: x.shard }),
      el("td", { class: "id", text: x.image || x.command }),
      el("td", { text: `${x.deadlineSeconds} s` }),
      el("td", { text: x.maximumRetries }),
      el("td", { text: x.actions.join(", ") }))))));
  main.append(el("h2", { text: "Workgroups" }), el("table", { id: "workgroups" },
    el("thead", {}, el("tr", {}, ["workgroup", "shard", "description"].map((h) => el("th", { text: h })))),
    el("tbody", {}, a.workgroups.map((w) => el("tr", {}, el("td", { text: w.name }), el("td", { text: w.shard }), el("td", { text: w.description }))))));
}

// --- shards -------------------------------------------------------------------------------------
const SHARDS_MS = 2000;

// The shards as the scheduler that answers sees them, refreshed every 2 s; the hand-over rate is
// the difference of two reads of each lane's counter.
async function shardsView(main, v) {
  const head = el("p", { id: "shards-head", class: "muted" });
  const body = el("tbody");
  main.append(el("h1", { text: "Shards" }), head, el("table", { id: "shards" },
    el("thead", {}, el("tr", {}, ["shard", "queued", "handed over", "rate now", "dispatch rate", "budget", "state", "receivers"].map((h) => el("th", { text: h })))),
    body));
  let last = null;
  async function refresh() {
    let s;
    try {
      s = await api("/algorithm/v1/shards");
    } catch (e) {
      if (current(v)) showError(e);
      return;
    }
    if (!current(v)) return;
    banner("");
    const now = Date.now();
    head.textContent = `as seen by scheduler ${s.scheduler}: ${s.queued} run(s) queued of ${s.queueBound}`;
    body.replaceChildren(...s.shards.map((x) => {
      const before = last && last.shards.find((y) => y.lane.shard === x.lane.shard);
      const rate = before ? ((x.handedOverTotal - before.handedOverTotal) * 1000) / Math.max(1, now - last.at) : null;
      const state = x.lane.shardDownForMs !== undefined
        ? `unreachable: paused ${(x.lane.shardDownForMs / 1000).toFixed(1)} s`
        : x.lane.slowedDown ? "slowed down by the shard" : "ok";
      const receivers = x.inProcess
        ? "in this process"
        : x.receivers.length === 0 ? "none known"
        : x.receivers.map((r) => `${r.endpoint} ${r.up ? "up" : `down (${((r.downForMs || 0) / 1000).toFixed(1)} s)`}`).join(", ");
      return el("tr", { "data-shard": x.lane.shard, class: state === "ok" ? "" : "warn" },
        el("td", {}, el("a", { href: `#/runs?shard=${enc(x.lane.shard)}`, text: x.lane.shard })),
        el("td", { class: "queued", text: x.lane.length }),
        el("td", { class: "handed", text: x.handedOverTotal }),
        el("td", { text: rate === null ? "…" : `${rate.toFixed(1)}/s` }),
        el("td", { text: `${x.lane.ratePerSecond.toFixed(1)}/s` }),
        el("td", { text: `${x.lane.ceilingPerSecond.toFixed(1)}/s, ${x.lane.schedulers} scheduler(s)` }),
        el("td", { class: "state", text: state }),
        el("td", { class: "receivers", text: receivers }));
    }));
    last = { at: now, shards: s.shards };
    later(v, refresh, SHARDS_MS);
  }
  await refresh();
}

// --- start --------------------------------------------------------------------------------------
setupToken();
window.addEventListener("hashchange", route);
route();
