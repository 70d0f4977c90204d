// The ModelForge web page: a config form built from GET /api/v1/schema, a start button, live
// progress from the job's event stream, and the jobs and runs the server knows.
import { SchemaForm } from "./form.js";
import { drawChart } from "./chart.js";

const API = "/api/v1";
const TOKEN_KEY = "modelforge-token";
const ACTIVE = new Set(["queued", "running"]);
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let form = null;
let following = null; // { id, abort }
let checkSeq = 0;
let checkTimer = 0;
let previewTimer = 0;
let lastConfig = null; // the form's config when it last validated in the browser
let lists = null;

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

function headers(json) {
  const out = {};
  if (token) out.Authorization = `Bearer ${token}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(API + path, { method, headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) askForToken();
  if (!response.ok) throw new HttpError(response.status, data);
  return data;
}

// Server-sent events read through fetch, so the bearer token travels in a header (an
// EventSource cannot send one) and never in a URL.
async function streamEvents(path, onEvent, signal) {
  const response = await fetch(API + path, { headers: headers(false), signal });
  if (!response.ok) throw new HttpError(response.status, await response.json().catch(() => ({})));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

function askForToken() {
  $("token-form").hidden = false;
  $("server-info").textContent = "this server needs its API token";
}

const text = (value) => (value === null || value === undefined ? "–" : String(value));
const num = (value, digits = 4) => (typeof value === "number" ? Number(value.toPrecision(digits)).toString() : "–");

function duration(seconds) {
  if (typeof seconds !== "number") return "–";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${r}` : `${m}:${r}`;
}

function cell(tag, value, cls) {
  const item = document.createElement(tag);
  item.textContent = value;
  if (cls) item.className = cls;
  return item;
}

// --- the form -------------------------------------------------------------------------------

function setStatus(message, cls = "muted") {
  const status = $("form-status");
  status.textContent = message;
  status.className = cls;
}

function showProblems(lines) {
  const box = $("form-errors");
  box.hidden = !lines.length;
  box.replaceChildren(...lines.map((line) => cell("div", line)));
}

function problemLine(error) {
  const where = error.line ? `${error.file ? error.file.split("/").pop() : ""}:${error.line}: ` : "";
  return `${where}${error.path}: ${error.message}`;
}

function onFormChange(result) {
  lastConfig = result.valid ? result.config : null;
  $("config-json").textContent = JSON.stringify(result.config, null, 2);
  showProblems(result.other);
  clearTimeout(checkTimer);
  if (!result.valid) {
    const count = result.fieldErrors.size + result.other.length;
    setStatus(count ? `${count} field${count === 1 ? "" : "s"} to fix` : "", "muted");
    return;
  }
  setStatus("checking…");
  checkTimer = setTimeout(() => serverCheck(result.config), 350);
}

// The server checks what the browser cannot (paths, the data root, installed plugins) and
// returns the resolved config, so untouched fields show what the profile makes of them.
async function serverCheck(config) {
  const seq = ++checkSeq;
  try {
    const report = await api("/validate?resolved=true", { method: "POST", body: config });
    if (seq !== checkSeq) return;
    form.showResolved(report.config, report.sources);
    const warnings = report.warnings || [];
    if (warnings.length) {
      // Valid, but this installation lacks a plugin or package: the server would refuse the job.
      showProblems(warnings);
      setStatus("valid, but this server cannot train it: " + warnings.join("; "), "bad");
    } else {
      setStatus("valid: ready to start", "ok");
    }
  } catch (error) {
    if (seq !== checkSeq) return;
    if (error.status === 400 && error.body.errors) {
      showProblems(form.showServerErrors(error.body.errors).map(problemLine));
      setStatus(`${error.body.error_count} problem${error.body.error_count === 1 ? "" : "s"} found by the server`, "bad");
    } else {
      setStatus(error.message, "bad");
    }
  }
}

function schedulePreview(path) {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(() => preview(path), 300);
}

async function preview(path) {
  const box = $("preview");
  if (!path) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  try {
    const result = await api(`/datasets/preview?rows=5&path=${encodeURIComponent(path)}`);
    const table = document.createElement("table");
    const head = document.createElement("tr");
    for (const column of result.columns) head.append(cell("th", column));
    table.append(head);
    for (const row of result.rows) {
      const line = document.createElement("tr");
      for (const column of result.columns) {
        const value = row[column];
        line.append(cell("td", value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value)));
      }
      table.append(line);
    }
    const caption = cell("p", `First ${result.rows.length} row${result.rows.length === 1 ? "" : "s"} of ${result.path}` +
      (result.more ? " (more follow)" : ""), "muted");
    const problems = (result.problems || []).map((p) => cell("p", `line ${p.line ?? p.row}: ${p.message}`, "error-text"));
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    wrap.append(table);
    const render = document.createElement("button");
    render.type = "button";
    render.id = "show-rendered";
    render.textContent = "Show as the model sees it";
    render.addEventListener("click", () => showRendered());
    const rendered = document.createElement("div");
    rendered.id = "rendered";
    box.replaceChildren(caption, wrap, ...problems, render, rendered);
  } catch (error) {
    box.replaceChildren(cell("p", `Preview: ${error.message}`, "error-text"));
  }
}

// The first rows through the chat template and the tokenizer, the trained tokens marked: what
// `modelforge validate --data --show 3` prints.
async function showRendered() {
  const box = $("rendered");
  if (!lastConfig) {
    box.replaceChildren(cell("p", "Fix the config first: the rows are rendered with its model and task.", "error-text"));
    return;
  }
  box.replaceChildren(cell("p", "rendering…", "muted"));
  try {
    const report = await api("/validate?data=true&show=3", { method: "POST", body: lastConfig });
    const shown = report.preview;
    const parts = [];
    for (const row of shown.rows) {
      parts.push(cell("p", `row ${row.index} (${row.where.split("/").pop()}): ${row.tokens} tokens, ` +
        `${row.trained_tokens} trained (highlighted)`, "muted"));
      const pre = document.createElement("pre");
      pre.className = "rendered-row";
      for (const segment of row.segments) pre.append(cell(segment.trained ? "mark" : "span", segment.text));
      parts.push(pre);
    }
    const limit = shown.max_seq_length;
    parts.push(cell("p", limit === null
      ? `${shown.total_rows} rows; longest ${shown.longest_tokens} tokens`
      : `${shown.total_rows} rows; longest ${shown.longest_tokens} tokens; ${shown.truncated_rows} longer than ` +
        `max_seq_length ${limit} (truncated in training)`, "muted"));
    box.replaceChildren(...parts);
  } catch (error) {
    const errors = error.body && error.body.errors ? error.body.errors.map(problemLine) : [error.message];
    box.replaceChildren(...errors.map((line) => cell("p", line, "error-text")));
  }
}

async function start(event) {
  event.preventDefault();
  form.showAll = true;
  const result = form.refresh();
  if (!result.valid) {
    const first = document.querySelector(".field.invalid input, .field.invalid select");
    if (first) first.focus();
    setStatus("fix the fields marked in red first", "bad");
    return;
  }
  const button = $("start");
  button.disabled = true;
  setStatus("starting…");
  try {
    const job = await api("/jobs", { method: "POST", body: result.config });
    setStatus(`job ${job.id} queued`, "ok");
    follow(job.id);
    refreshLists();
  } catch (error) {
    if (error.status === 400 && error.body.errors) {
      showProblems(form.showServerErrors(error.body.errors).map(problemLine));
      setStatus("the server refused the config", "bad");
    } else {
      setStatus(error.message, "bad");
    }
  } finally {
    button.disabled = false;
  }
}

// --- progress ---------------------------------------------------------------------------------

const chart = { loss: [], eval: [], reward: [] };

function redraw() {
  drawChart($("chart"), [
    { name: "train loss", cls: "train", points: chart.loss },
    { name: "eval loss", cls: "eval", points: chart.eval },
    // Online RL strategies (grpo) log the mean reward of each step's completions.
    { name: "mean reward", cls: "reward", points: chart.reward },
  ]);
}

function addRecord(record) {
  if (typeof record.step !== "number") return;
  if (typeof record.loss === "number") chart.loss.push({ x: record.step, y: record.loss });
  if (typeof record.eval_loss === "number" && !record.stage) chart.eval.push({ x: record.step, y: record.eval_loss });
  if (typeof record.reward === "number" && !record.stage) chart.reward.push({ x: record.step, y: record.reward });
}

function metricsTable(metrics) {
  const before = (metrics && metrics.before) || {};
  const after = (metrics && metrics.after) || {};
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])]
    .filter((k) => !/(_runtime|_per_second|epoch)$/.test(k)).sort();
  if (!keys.length) return document.createTextNode("");
  const table = document.createElement("table");
  table.className = "metrics";
  const head = document.createElement("tr");
  head.append(cell("th", "metric"), cell("th", "before"), cell("th", "after"));
  table.append(head);
  for (const key of keys) {
    const row = document.createElement("tr");
    row.append(cell("td", key), cell("td", num(before[key])), cell("td", num(after[key])));
    table.append(row);
  }
  return table;
}

function renderJob(view) {
  $("job").hidden = false;
  $("job-title").textContent = `job ${view.id} · ${view.run.id}`;
  const state = $("job-state");
  state.textContent = view.state;
  state.className = `badge ${view.state}`;
  const p = view.progress || {};
  $("job-step").textContent = p.step !== undefined ? `step ${p.step}${p.total_steps ? ` / ${p.total_steps}` : ""}` :
    view.state === "queued" ? `position ${view.queue_position ?? "?"} in the queue` : "";
  $("job-loss").textContent = p.loss !== undefined && p.loss !== null ? `loss ${num(p.loss)}` : "";
  $("job-eta").textContent = view.state === "running" && typeof p.eta_seconds === "number" ? `ETA ${duration(p.eta_seconds)}` : "";
  const bar = $("job-bar");
  bar.max = p.total_steps || 1;
  bar.value = view.state === "finished" ? bar.max : Math.min(p.step || 0, bar.max);
  $("cancel").hidden = !ACTIVE.has(view.state);
  $("cancel").disabled = view.cancel_requested;
  const error = $("job-error");
  error.hidden = !view.error;
  error.textContent = view.error || "";
  $("job-metrics").replaceChildren(metricsTable(view.metrics));
}

async function follow(id) {
  if (following) following.abort.abort();
  const abort = new AbortController();
  following = { id, abort };
  chart.loss = [];
  chart.eval = [];
  chart.reward = [];
  redraw();
  let frame = 0;
  try {
    await streamEvents(`/jobs/${encodeURIComponent(id)}/events`, (event, data) => {
      if (event === "log") {
        addRecord(data);
        if (!frame) frame = requestAnimationFrame(() => { frame = 0; redraw(); });
      } else if (event === "job" || event === "end") {
        renderJob(data);
        if (event === "end") refreshLists();
      }
    }, abort.signal);
  } catch (error) {
    if (error.name !== "AbortError") $("job-title").textContent = `lost the event stream: ${error.message}`;
  }
  redraw();
}

async function cancel() {
  if (!following) return;
  $("cancel").disabled = true;
  try {
    renderJob(await api(`/jobs/${encodeURIComponent(following.id)}/cancel`, { method: "POST" }));
  } catch (error) {
    $("job-error").hidden = false;
    $("job-error").textContent = error.message;
  }
}

async function showRun(id) {
  if (following) following.abort.abort();
  following = null;
  const run = await api(`/runs/${id.split("/").map(encodeURIComponent).join("/")}`);
  chart.loss = [];
  chart.eval = [];
  chart.reward = [];
  for (const record of run.log) addRecord(record);
  redraw();
  renderJob({ id: run.job_id || "–", state: run.status, run: { id: run.id }, progress: run.progress,
    metrics: run.metrics, error: run.error, cancel_requested: true });
  $("job-title").textContent = `run ${run.id}`;
}

// --- jobs and runs ------------------------------------------------------------------------------

function renderJobs(jobs) {
  const list = $("jobs");
  if (!jobs.length) {
    list.replaceChildren(cell("li", "none yet", "muted"));
    return;
  }
  list.replaceChildren(...jobs.slice(0, 12).map((job) => {
    const item = document.createElement("li");
    const button = cell("button", job.id, "link");
    button.type = "button";
    button.addEventListener("click", () => follow(job.id));
    const detail = [job.config.task, job.config.strategy, job.config.model_name].filter(Boolean).join(" · ");
    item.append(cell("span", job.state, `badge ${job.state}`), button, cell("span", detail, "muted"));
    if (job.state === "queued") item.append(cell("span", `#${job.queue_position} in queue`, "muted"));
    return item;
  }));
}

function renderRuns(runs) {
  const body = $("runs").tBodies[0];
  if (!runs.length) {
    const row = document.createElement("tr");
    const empty = cell("td", "no runs yet", "muted");
    empty.colSpan = 6;
    row.append(empty);
    body.replaceChildren(row);
    return;
  }
  body.replaceChildren(...runs.map((run) => {
    const row = document.createElement("tr");
    row.dataset.run = run.id;
    const before = (run.metrics.before || {});
    const after = (run.metrics.after || {});
    const name = cell("button", run.name, "link");
    name.type = "button";
    name.title = run.id;
    name.addEventListener("click", () => showRun(run.id));
    const first = document.createElement("td");
    first.append(name);
    const status = document.createElement("td");
    status.append(cell("span", run.status, `badge ${run.status}`));
    if (run.stop_reason || run.best_step != null) {
      const stop = run.stop_reason ? `stopped: ${run.stop_reason.replace("_", " ")}` : "ran to the end";
      const early = cell("div", `${stop} · best step ${text(run.best_step)}`, "muted stop");
      if (run.stop_message) early.title = run.stop_message;
      status.append(early);
    }
    row.append(first, status, cell("td", `${text(run.task)} / ${text(run.strategy)}`), cell("td", text(run.global_step)),
      cell("td", `${num(before.eval_loss)} → ${num(after.eval_loss)}`, "metric"),
      cell("td", `${num(before.eval_perplexity)} → ${num(after.eval_perplexity)}`, "metric"));
    return row;
  }));
}

async function refreshLists() {
  if (lists) return lists;
  lists = (async () => {
    try {
      const [jobs, runs] = await Promise.all([api("/jobs"), api("/runs")]);
      renderJobs(jobs.jobs);
      renderRuns(runs.runs);
      return jobs.jobs;
    } catch {
      return [];
    } finally {
      lists = null;
    }
  })();
  return lists;
}

async function fillDatalists() {
  const files = await api("/files");
  for (const [id, items] of [["datasets-list", files.datasets], ["models-list", files.models]]) {
    const list = document.createElement("datalist");
    list.id = id;
    for (const item of items) {
      const option = document.createElement("option");
      option.value = item;
      list.append(option);
    }
    document.body.append(list);
  }
}

async function init() {
  try {
    const health = await api("/health");
    $("server-info").textContent = `server ${health.version}${health.token_required ? " · token set" : " · local only"}`;
    $("token-form").hidden = true;
  } catch {
    return; // askForToken() shows the token field; submitting it calls init() again
  }
  const schema = await api("/schema");
  $("schema-id").textContent = schema.$id || "";
  try {
    form = new SchemaForm(schema, $("fields"), { onChange: onFormChange, onDataset: schedulePreview });
    form.render();
  } catch (error) {
    // A plugin's schema fragment that Ajv (strict mode) cannot compile: say so, never a blank page.
    form = null;
    const report = await api("/plugins").catch(() => ({}));
    const culprits = Object.entries(report.schema_problems || {}).filter(([name]) => name !== "effective schema");
    const text = culprits.length
      ? culprits.map(([name, problem]) => `the ${name}: ${problem}`).join("; ")
      : error.message;
    const box = document.createElement("p");
    box.id = "schema-error";
    box.className = "error-text";
    box.textContent = `The form cannot be shown: Ajv (strict mode) cannot compile the schema (${text}). ` +
      "Fix or disable that plugin (MODELFORGE_DISABLE_PLUGINS) and restart the server.";
    $("fields").replaceChildren(box);
    setStatus("the schema of an installed plugin cannot be compiled", "bad");
    document.body.dataset.ready = "true";
    return;
  }
  // The dataset preview belongs under the essentials, where the dataset is chosen.
  const essentials = $("fields").querySelector("details.group");
  if (essentials) essentials.append($("preview"));
  document.body.dataset.ready = "true";
  fillDatalists().catch(() => {});
  const jobs = await refreshLists();
  const active = jobs.find((job) => job.state === "running") || jobs.find((job) => job.state === "queued");
  if (active) follow(active.id);
  redraw();
  setInterval(refreshLists, 4000);
}

$("config-form").addEventListener("submit", start);
$("cancel").addEventListener("click", cancel);
$("show-json").addEventListener("click", () => {
  const pre = $("config-json");
  pre.hidden = !pre.hidden;
  $("show-json").textContent = pre.hidden ? "Show JSON" : "Hide JSON";
});
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  init();
});
init();
