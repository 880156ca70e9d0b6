// Browser tests of the web console: Debian's chromium driven by playwright-core against real
// standalones that scripts/console-test.sh starts (it sets every NEXUS_CONSOLE_* variable read
// here). Each test opens a fresh browser context (fresh session storage, so no token carries
// over), fails on any script error or CSP violation in the page, and saves screenshots to
// $NEXUS_CONSOLE_ARTIFACTS. Every wait is bounded; nothing asserts a timing.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the tests with scripts/console-test.sh`);
  return v;
}
const OPEN = need("NEXUS_CONSOLE_URL");
const AUTH = need("NEXUS_CONSOLE_AUTH_URL");
const SCALE = need("NEXUS_CONSOLE_SCALE_URL");
const KEY_ALL = need("NEXUS_CONSOLE_KEY_ALL");
const KEY_KNAPSACK = need("NEXUS_CONSOLE_KEY_KNAPSACK");
const RUNS = Number(need("NEXUS_CONSOLE_RUNS"));
const ARTIFACTS = need("NEXUS_CONSOLE_ARTIFACTS");
const PAYLOADS = need("NEXUS_CONSOLE_PAYLOADS");
const { chromium } = createRequire(join(need("NEXUS_CONSOLE_PLAYWRIGHT"), "package.json"))(need("NEXUS_CONSOLE_PLAYWRIGHT"));

const PAGE = 50; // the console's page size (app.js)
const WAIT = 30_000; // the longest any single UI condition may take
mkdirSync(ARTIFACTS, { recursive: true });
const timings = {};
const payload = (name) => JSON.parse(readFileSync(join(PAYLOADS, name), "utf8"));
const unique = (what) => `${what}-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`;

// --- API helpers (the test's own client, to set the scene and to check what the page shows) --
async function call(base, path, { method = "GET", body, token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}
async function submit(base, alg, params, { tag, token, custom, dryRun } = {}) {
  const body = { algorithmParameters: params };
  if (tag) body.tag = tag;
  if (custom) body.customConfiguration = custom;
  const r = await call(base, `/algorithm/v1/run/${alg}${dryRun ? "?dryRun=true" : ""}`, { method: "POST", body, token });
  return r.requestId;
}
async function eventually(what, cond, ms = WAIT) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
async function stageOf(base, alg, id, token) {
  return (await call(base, `/algorithm/v1/metadata/${alg}/requests/${id}`, { token })).lifecycle_stage;
}
// A chaos run sleeping `seconds`, with a deadline that lets it.
const sleeper = (base, seconds, tag) =>
  submit(base, "chaos", { mode: "sleep", seconds }, { tag, custom: { runtimeEnvironment: { deadlineSeconds: seconds + 60 } } });

// --- browser ---------------------------------------------------------------------------------
let browser;
before(async () => {
  browser = await chromium.launch({ executablePath: need("NEXUS_CONSOLE_CHROMIUM"), args: ["--no-sandbox"] });
});
after(async () => {
  await browser?.close();
  writeFileSync(join(ARTIFACTS, "timings.json"), `${JSON.stringify(timings, null, 2)}\n`);
});

// A page in a fresh context; `problems` collects script errors and CSP violations.
async function open(t, opts = {}) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, ...opts });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 40[13]/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  // Which resource failed: the browser's console message does not say.
  page.on("response", (r) => {
    if (r.status() >= 400 && r.status() !== 401 && r.status() !== 403) problems.push(`HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  t.after(async () => {
    await context.close();
  });
  return { page, problems };
}
const shot = (page, name) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
const rowsOf = (page) => page.locator("#runs-body tr");
const stageIs = (page, s) => page.locator(`#run-stage .stage[data-stage="${s}"]`).waitFor();
function clean(problems) {
  assert.deepEqual(problems, [], "the page logged no error (no script error, no CSP violation)");
}

// --- main flows (no authentication) ---------------------------------------------------------
test("runs page: a run is found by algorithm, stage and tag; its page shows explanation, timeline, logs and links", async (t) => {
  const tag = unique("find");
  const id = await submit(OPEN, "knapsack", payload("knapsack.json"), { tag });
  const other = await submit(OPEN, "hello", payload("hello.json"), { tag });
  await eventually("the knapsack run to complete", async () => (await stageOf(OPEN, "knapsack", id)) === "COMPLETED");
  await eventually("the hello run to end", async () => ["COMPLETED", "FAILED"].includes(await stageOf(OPEN, "hello", other)));

  const { page, problems } = await open(t);
  await page.goto(`${OPEN}/console/`);
  await page.locator("#filters").waitFor();
  await page.locator("#filters select[name=algorithm] option[value=knapsack]").waitFor({ state: "attached" });
  await page.selectOption("#filters select[name=algorithm]", "knapsack");
  await page.selectOption("#filters select[name=stage]", "COMPLETED");
  await page.fill("#filters input[name=tag]", tag);
  await page.click("#filters button[type=submit]");
  await page.locator(`#runs-body tr[data-id="${id}"]`).waitFor();
  assert.equal(await rowsOf(page).count(), 1, "only the knapsack run of that tag");
  // Every control has an accessible name (a label or aria-label).
  const unnamed = await page.locator("input, select, button").evaluateAll((els) =>
    els.filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.textContent.trim()).map((e) => e.outerHTML));
  assert.deepEqual(unnamed, [], "no unnamed control");
  assert.match(page.url(), /algorithm=knapsack/);
  assert.match(page.url(), /stage=COMPLETED/);
  await shot(page, "runs-filtered");

  // The tag alone finds both.
  await page.goto(`${OPEN}/console/#/runs?tag=${tag}`);
  await page.locator(`#runs-body tr[data-id="${other}"]`).waitFor();
  await page.locator(`#runs-body tr[data-id="${id}"]`).waitFor();
  assert.equal(await rowsOf(page).count(), 2);

  await page.click(`#runs-body tr[data-id="${id}"] a`);
  await stageIs(page, "COMPLETED");
  assert.equal(new URL(page.url()).hash, `#/run/knapsack/${id}`);
  await page.locator("#why-summary").waitFor();
  assert.match(await page.textContent("#why-summary"), /completed/);
  const changes = page.locator("#timeline-table tbody tr");
  await eventually("three stage changes", async () => (await changes.count()) === 3);
  assert.deepEqual(await changes.evaluateAll((trs) => trs.map((tr) => tr.dataset.to)), ["BUFFERED", "RUNNING", "COMPLETED"]);
  assert.match(await page.textContent("#timeline-table"), /the algorithm reported its result/);
  assert.ok(await page.locator("#result-link").getAttribute("href"), "a signed result link");
  assert.ok(await page.locator("#payload-link").getAttribute("href"), "a signed payload link");
  // The logs are stored when the process exits, which may be just after the run completed.
  await page.locator("#logs-text").waitFor();
  assert.match(await page.textContent("#logs-text"), /\[nexus-demo\]/);
  // The result link serves the result (signed: no token needed).
  const result = await (await fetch(await page.locator("#result-link").getAttribute("href"))).text();
  assert.ok(result.length > 0, "the result link serves the result");
  await shot(page, "run");
  clean(problems);
});

test("dark mode: the run page renders with the dark palette", async (t) => {
  const id = await submit(OPEN, "knapsack", payload("knapsack.json"), { tag: unique("dark") });
  const { page, problems } = await open(t, { colorScheme: "dark" });
  await page.goto(`${OPEN}/console/#/run/knapsack/${id}`);
  await stageIs(page, "COMPLETED");
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(bg, "rgb(22, 24, 28)", "the dark background");
  await shot(page, "run-dark");
  clean(problems);
});

test("runs page updates live: a new run appears and goes RUNNING -> COMPLETED without a reload", async (t) => {
  const tag = unique("live");
  const { page, problems } = await open(t);
  await page.goto(`${OPEN}/console/#/runs?tag=${tag}`);
  await page.locator("#runs-status").waitFor();
  await eventually("the empty listing", async () => /No run matches/.test(await page.textContent("#runs-status")));
  await page.evaluate(() => {
    window.notReloaded = true;
  });
  const id = await sleeper(OPEN, 4, tag);
  await page.locator(`#runs-body tr[data-id="${id}"] .stage[data-stage="RUNNING"]`).waitFor();
  await page.locator(`#runs-body tr[data-id="${id}"] .stage[data-stage="COMPLETED"]`).waitFor();
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page was not reloaded");
  clean(problems);
});

test("run page updates live: a sleeping run goes RUNNING -> COMPLETED, its logs grow, explanation and timeline follow", async (t) => {
  const id = await sleeper(OPEN, 8, unique("progress"));
  const { page, problems } = await open(t);
  await page.goto(`${OPEN}/console/#/run/chaos/${id}`);
  await stageIs(page, "RUNNING");
  assert.match(await page.textContent("#why-summary"), /running/);
  assert.equal(await page.locator("#cancel").isVisible(), true, "a running run can be cancelled");
  await page.evaluate(() => {
    window.notReloaded = true;
  });
  // The output so far, while it runs: the action line, before the run wakes up.
  await eventually("live output", async () => /\[chaos\] action/.test((await page.locator("#logs-text").textContent().catch(() => "")) || ""));
  assert.match(await page.textContent("#logs-live"), /live/);
  assert.doesNotMatch(await page.textContent("#logs-text"), /woke up/);
  assert.match(await page.textContent("#run-stage"), /RUNNING/);
  // The progress the algorithm reports (chaos: every second it sleeps) shows as a bar.
  await eventually("reported progress", async () => Number((await page.locator("#facts .run-progress progress").getAttribute("value").catch(() => "0")) || 0) > 0);
  assert.match(await page.textContent("#facts .run-progress"), /\d+% slept \d+s of 8s/);
  await shot(page, "run-running");
  await stageIs(page, "COMPLETED");
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page was not reloaded");
  await page.locator('#timeline-table tr[data-to="COMPLETED"]').waitFor();
  assert.match(await page.textContent("#why-summary"), /completed/);
  assert.equal(await page.locator("#cancel").isVisible(), false, "nothing to cancel any more");
  await page.locator("#logs-text").waitFor();
  assert.match(await page.textContent("#logs-text"), /woke up/);
  assert.equal(await page.textContent("#run-live"), "final");
  clean(problems);
});

test("external runs: a run executed elsewhere is listed and shown with its mark", async (t) => {
  const tag = unique("external");
  const body = { algorithmParameters: { capacity: 1, items: [] }, stage: "COMPLETED", result: { total: 0 }, engine: "spark", tag };
  const { requestId: id } = await call(OPEN, "/algorithm/v1/external/knapsack", { method: "POST", body });
  const local = await submit(OPEN, "knapsack", payload("knapsack.json"), { tag });
  await eventually("the Nexus run to complete", async () => (await stageOf(OPEN, "knapsack", local)) === "COMPLETED");
  const { page, problems } = await open(t);
  await page.goto(`${OPEN}/console/#/runs?tag=${tag}`);
  await eventually("both runs listed", async () => (await rowsOf(page).count()) === 2);
  const marked = rowsOf(page).filter({ has: page.locator(".external-mark") });
  assert.equal(await marked.count(), 1, "only the external run carries the mark");
  assert.match(await marked.textContent(), new RegExp(id.slice(0, 8)));
  await page.goto(`${OPEN}/console/#/run/knapsack/${id}`);
  await stageIs(page, "COMPLETED");
  await page.locator("#run-stage .external-mark").waitFor();
  assert.match(await page.textContent("#facts"), /outside Nexus \(external run\)/);
  await page.locator("#result-link").waitFor();
  await shot(page, "run-external");
  clean(problems);
});

test("why is it waiting: a run behind its workgroup's limit says so, then runs when a slot frees", async (t) => {
  // Workgroup 'local' (examples/templates/workgroup.yaml) runs at most 4 runs at once.
  const tag = unique("waiting");
  const blockers = [];
  for (let i = 0; i < 4; i++) blockers.push(await sleeper(OPEN, 60, tag));
  await eventually("four runs running", async () =>
    (await Promise.all(blockers.map((b) => stageOf(OPEN, "chaos", b)))).every((s) => s === "RUNNING"));
  const id = await sleeper(OPEN, 1, tag);
  const cancelAll = () => Promise.all(blockers.map((b) =>
    call(OPEN, `/algorithm/v1/cancel/chaos/requests/${b}`, { method: "POST", body: { initiator: "console test", reason: "unblock" } }).catch(() => {})));
  t.after(cancelAll);
  const { page, problems } = await open(t);
  await page.goto(`${OPEN}/console/#/run/chaos/${id}`);
  await stageIs(page, "BUFFERED");
  assert.match(await page.textContent("#why-summary"), /workgroup 'local'/);
  assert.match(await page.textContent("#explanation"), /4 run\(s\) at once per receiver/);
  await shot(page, "run-waiting");
  await cancelAll();
  await stageIs(page, "COMPLETED");
  assert.deepEqual(await page.locator("#timeline-table tbody tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.to)), ["BUFFERED", "RUNNING", "COMPLETED"]);
  clean(problems);
});

test("cancel: a running run is cancelled from its page", async (t) => {
  const id = await sleeper(OPEN, 120, unique("cancel"));
  const { page, problems } = await open(t);
  await page.goto(`${OPEN}/console/#/run/chaos/${id}`);
  await stageIs(page, "RUNNING");
  page.once("dialog", (d) => d.accept());
  await page.click("#cancel");
  await stageIs(page, "CANCELLED");
  assert.equal(await stageOf(OPEN, "chaos", id), "CANCELLED", "the API agrees");
  await page.locator('#timeline-table tr[data-to="CANCELLED"]').waitFor();
  assert.match(await page.textContent('#timeline-table tr[data-to="CANCELLED"]'), /web console/, "the timeline says who cancelled");
  assert.match(await page.textContent("#banner"), /Cancellation of .* requested/);
  // The killed process's output is stored after the run ended: the page picks it up.
  await page.locator("#logs-text").waitFor();
  await shot(page, "run-cancelled");
  clean(problems);
});

test("child runs: a fanout run's tree leads to a child, whose page leads back to its parent", async (t) => {
  const id = await submit(OPEN, "fanout", payload("fanout.json"), { tag: unique("fanout") });
  const { page, problems } = await open(t);
  await page.goto(`${OPEN}/console/#/run/fanout/${id}`);
  const child = page.locator("#children ul.tree > li").first();
  await child.waitFor();
  const childId = await child.getAttribute("data-id");
  assert.ok(childId && childId !== id);
  await stageIs(page, "COMPLETED").catch(() => {}); // let the tree settle when it is fast
  await shot(page, "run-fanout");
  await child.locator("a").first().click();
  await eventually("the child's page", async () => new URL(page.url()).hash === `#/run/fanout/${childId}`);
  await page.locator("#parent-link").waitFor();
  assert.equal(await page.locator("#parent-link").getAttribute("href"), `#/run/fanout/${id}`);
  assert.match(await page.textContent("#facts"), /depth\s*1/);
  await shot(page, "run-child");
  // The root's tree of runs on the runs page: the root and its children.
  await page.goto(`${OPEN}/console/#/runs?root=${id}`);
  await page.locator(`#runs-body tr[data-id="${childId}"]`).waitFor();
  await page.locator(`#runs-body tr[data-id="${id}"]`).waitFor();
  clean(problems);
});

test("algorithms page: the catalog with workgroups; an algorithm links to its runs", async (t) => {
  const { page, problems } = await open(t);
  await page.goto(`${OPEN}/console/#/algorithms`);
  for (const a of ["knapsack", "fanout", "chaos", "hello"]) await page.locator(`#algorithms tr[data-name="${a}"]`).waitFor();
  assert.match(await page.textContent("#workgroups"), /local/);
  await shot(page, "algorithms");
  await page.click('#algorithms tr[data-name="knapsack"] a');
  await page.locator("#filters").waitFor();
  await eventually("the algorithm filter", async () => (await page.inputValue("#filters select[name=algorithm]")) === "knapsack");
  clean(problems);
});

test("shards page: lanes, budgets and receivers, updated live as runs are handed over", async (t) => {
  const { page, problems } = await open(t);
  await page.goto(`${OPEN}/console/#/shards`);
  const row = page.locator('#shards tr[data-shard="local"]');
  await row.waitFor();
  assert.match(await row.locator(".receivers").textContent(), /in this process/);
  assert.match(await page.textContent("#shards-head"), /as seen by scheduler \S+: \d+ run\(s\) queued of \d+/);
  const before = Number(await row.locator(".handed").textContent());
  await submit(OPEN, "knapsack", payload("knapsack.json"), { tag: unique("shards") });
  // The page refreshes itself: the lane's hand-over counter grows without a reload.
  await eventually("the hand-over counter", async () => Number(await row.locator(".handed").textContent()) > before);
  assert.equal(await row.locator(".state").textContent(), "ok");
  await shot(page, "shards");
  await row.locator("a").click();
  await eventually("the shard filter", async () => (await page.inputValue("#filters input[name=shard]")) === "local");
  clean(problems);
});

// --- authentication --------------------------------------------------------------------------
test("authentication: a 401 opens the token dialog; with the key the runs show", async (t) => {
  const tag = unique("auth");
  const k = await submit(AUTH, "knapsack", payload("knapsack.json"), { tag, token: KEY_ALL });
  const h = await submit(AUTH, "hello", payload("hello.json"), { tag, token: KEY_ALL });
  const { page, problems } = await open(t);
  await page.goto(`${AUTH}/console/#/runs?tag=${tag}`);
  await page.locator("#token-dialog[open]").waitFor();
  assert.match(await page.textContent("#banner"), /Sign in/);
  await shot(page, "token-dialog");
  await page.fill("#token-input", KEY_ALL);
  await page.click("#token-save");
  await page.locator(`#runs-body tr[data-id="${k}"]`).waitFor();
  await page.locator(`#runs-body tr[data-id="${h}"]`).waitFor();
  assert.equal(await page.locator("#token-dialog[open]").count(), 0, "the dialog closed");
  assert.equal(await page.textContent("#who"), "token set");
  await shot(page, "runs-authenticated");
  // A wrong token: 401 again, the dialog reopens.
  await page.click("#token-button");
  await page.fill("#token-input", "nxk_not-a-key");
  await page.click("#token-save");
  await page.locator("#token-dialog[open]").waitFor();
  clean(problems);
});

test("authorization: a key granted only knapsack sees neither hello's runs nor hello", async (t) => {
  const tag = unique("authz");
  const k = await submit(AUTH, "knapsack", payload("knapsack.json"), { tag, token: KEY_ALL });
  const h = await submit(AUTH, "hello", payload("hello.json"), { tag, token: KEY_ALL });
  await eventually("the hello run listed for the key of all", async () =>
    (await call(AUTH, `/algorithm/v1/runs?tag=${tag}`, { token: KEY_ALL })).runs.length === 2);
  const { page, problems } = await open(t);
  await page.goto(`${AUTH}/console/#/runs?tag=${tag}`);
  await page.locator("#token-dialog[open]").waitFor();
  await page.fill("#token-input", KEY_KNAPSACK);
  await page.click("#token-save");
  await page.locator(`#runs-body tr[data-id="${k}"]`).waitFor();
  assert.equal(await rowsOf(page).count(), 1, "only the knapsack run");
  assert.equal(await page.locator(`#runs-body tr[data-id="${h}"]`).count(), 0);
  // The algorithm filter offers only knapsack.
  const options = await page.locator("#filters select[name=algorithm] option").evaluateAll((os) => os.map((o) => o.value));
  assert.deepEqual(options, ["", "knapsack"]);
  // hello's run page is refused (403), not shown.
  await page.goto(`${AUTH}/console/#/run/hello/${h}`);
  await eventually("the refusal", async () => /403/.test((await page.textContent("#banner")) || ""));
  assert.equal(await page.locator("#run-stage .stage").count(), 0, "no stage shown");
  // The algorithms page lists knapsack only.
  await page.goto(`${AUTH}/console/#/algorithms`);
  await page.locator('#algorithms tr[data-name="knapsack"]').waitFor();
  assert.equal(await page.locator("#algorithms tbody tr").count(), 1);
  await shot(page, "algorithms-knapsack-only");
  clean(problems);
});

// --- scale -----------------------------------------------------------------------------------
// Seeds RUNS dry-run runs (stored COMPLETED, nothing executed) over HTTP, in batches of 1,000
// (POST /algorithm/v1/batch, one store transaction each) with a bounded number of requests in
// flight: tag seed-<i mod 1000>, so every tag names RUNS/1000 runs.
async function seed(base, n, concurrency = 4, batch = 1000) {
  let next = 0;
  let failed = 0;
  const deadline = Date.now() + 20 * 60_000;
  async function worker() {
    for (;;) {
      const first = next;
      if (first >= n) return;
      next = Math.min(n, first + batch);
      if (Date.now() > deadline) throw new Error(`seeding ${n} runs took over 20 minutes (${first} sent)`);
      const runs = [];
      for (let i = first; i < next; i++) {
        runs.push({ algorithmParameters: { capacity: 1, items: [] }, tag: `seed-${i % 1000}` });
      }
      const r = await fetch(`${base}/algorithm/v1/batch/knapsack?dryRun=true`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ runs }),
      });
      const body = await r.json();
      if (r.status !== 202 || body.requestIds?.length !== runs.length) failed += runs.length;
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  assert.equal(failed, 0, "every seeding submission accepted");
}

test(`scale: the runs page stays responsive with ${RUNS} runs stored`, { timeout: 30 * 60_000 }, async (t) => {
  const t0 = Date.now();
  await seed(SCALE, RUNS);
  timings.seed = { runs: RUNS, seconds: (Date.now() - t0) / 1000 };
  t.diagnostic(`seeded ${RUNS} runs in ${timings.seed.seconds.toFixed(1)} s`);
  const perTag = RUNS / 1000;

  const { page, problems } = await open(t);
  // Times `act` until `rows` rows are in the table (checked in the page at every frame, so the
  // figure is the time to render, not a polling interval), then checks what they show.
  const timed = async (what, act, rows) => {
    const start = performance.now();
    await act();
    await page.waitForFunction((n) => document.querySelectorAll("#runs-body tr").length === n, rows, { polling: "raf", timeout: WAIT });
    const d = Math.round(performance.now() - start);
    timings[what] = d;
    t.diagnostic(`${what}: ${d} ms`);
  };
  const column = (i) => rowsOf(page).evaluateAll((trs, i) => trs.map((tr) => tr.children[i].textContent), i);

  await timed("first page: navigation to 50 rows", () => page.goto(`${SCALE}/console/#/runs?live=0`), PAGE);
  await shot(page, "runs-100k");
  await timed("load more: 50 -> 100 rows", () => page.click("#more"), 2 * PAGE);
  const ids = await rowsOf(page).evaluateAll((trs) => trs.map((tr) => tr.dataset.id));
  assert.equal(new Set(ids).size, 2 * PAGE, "two pages of distinct runs");
  // Newest first: ids are time-ordered (UUIDv7), so the rows' ids descend.
  assert.deepEqual(ids, [...ids].sort().reverse(), "newest first across pages");

  // A filtered query through the form: one tag of 1000, then every run of it, page by page.
  const firstOfTag = Math.min(PAGE, perTag);
  await timed(`filtered query: tag, first ${firstOfTag} rows`, async () => {
    await page.fill("#filters input[name=tag]", "seed-7");
    await page.click("#filters button[type=submit]");
  }, firstOfTag);
  assert.ok((await column(3)).every((x) => x === "seed-7"), "only runs of the tag");
  for (let i = 0; i < 10 && (await page.locator("#more").isVisible()); i++) {
    const n = await rowsOf(page).count();
    await timed(`filtered query: load more from ${n} rows`, () => page.click("#more"), Math.min(n + PAGE, perTag));
  }
  assert.equal(await rowsOf(page).count(), perTag, `every run of tag seed-7 (${perTag})`);
  assert.ok((await column(3)).every((x) => x === "seed-7"));
  assert.equal(await page.locator("#more").isVisible(), false, "no further page");
  assert.equal(await page.textContent("#runs-status"), `${perTag} run${perTag === 1 ? "" : "s"} shown`);
  await shot(page, "runs-100k-filtered");
  // By algorithm and stage over all of them, and a filter nothing matches.
  await timed("filtered query: algorithm + stage, 50 rows", () => page.goto(`${SCALE}/console/#/runs?algorithm=knapsack&stage=COMPLETED&live=0`), PAGE);
  assert.ok((await page.locator("#runs-body .stage").allTextContents()).every((x) => x === "COMPLETED"));
  const start = performance.now();
  await page.goto(`${SCALE}/console/#/runs?stage=FAILED&live=0`);
  await page.waitForFunction(() => document.querySelector("#runs-status")?.textContent === "No run matches.", null, { polling: "raf", timeout: WAIT });
  timings["filtered query: stage nothing has (FAILED), empty answer"] = Math.round(performance.now() - start);
  t.diagnostic(`filtered query: stage nothing has, empty answer: ${timings["filtered query: stage nothing has (FAILED), empty answer"]} ms`);
  assert.equal(await rowsOf(page).count(), 0);
  // What the API says about the same store: a tag's runs, counted over every page.
  let count = 0;
  let cursor = "";
  for (let i = 0; i < 100; i++) {
    const p = await call(SCALE, `/algorithm/v1/runs?tag=seed-7&limit=1000${cursor ? `&cursor=${cursor}` : ""}`);
    count += p.runs.length;
    if (!p.nextCursor) break;
    cursor = p.nextCursor;
  }
  assert.equal(count, perTag, "the API agrees");
  clean(problems);
});
