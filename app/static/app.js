// imgjobs web page: pick an image, probe it, plan a job (dry run), submit it, wait for it,
// show the result beside the original. Only this origin's API; no dependencies. On a server
// with API keys, a 401 brings up the key field; the key is then sent with every API request.

const $ = (id) => document.getElementById(id);

const PRESETS = {
  thumbnail: { width: 300, height: 300, fit: "inside", position: "centre", format: "", quality: "" },
  square: { width: 400, height: 400, fit: "cover", position: "attention", format: "", quality: "" },
  web: { width: 1600, height: "", fit: "inside", position: "centre", format: "webp", quality: 80 },
  avatar: { width: 200, height: 200, fit: "cover", position: "attention", format: "webp", quality: "" },
  social: { width: 1200, height: 630, fit: "cover", position: "entropy", format: "jpeg", quality: 85 },
};
const FIT_HELP = {
  cover: "Fills the whole box and crops what overflows, keeping the part at Position.",
  contain: "Fits the whole image in the box and pads the rest (transparent, white in JPEG).",
  fill: "Stretches to exactly the box; the aspect ratio may change.",
  inside: "Fits within the box, keeping the aspect ratio; no padding, no crop.",
  outside: "Covers the box, keeping the aspect ratio; nothing is cropped.",
};
const DEFAULT_QUALITY = { jpeg: 85, webp: 80, avif: 60 };
const LOSSY = new Set(["jpeg", "webp", "avif"]);
const WITH_ALPHA = new Set(["png", "webp", "avif", "gif"]);
const ORIENTATIONS = {
  1: "Upright",
  2: "Mirrored",
  3: "Rotated 180°",
  4: "Flipped",
  5: "Mirrored, rotated 90°",
  6: "Rotated 90° (EXIF 6)",
  7: "Mirrored, rotated 270°",
  8: "Rotated 270° (EXIF 8)",
};
const WAIT_S = 30; // long-poll of GET /jobs/{id}?wait=
const PLAN_DELAY_MS = 300;
const HISTORY_SIZE = 8;
const KEY_STORAGE = "imgjobs.api-key"; // in sessionStorage: this tab only, gone when it closes
const KEY_TEXT = /^[\x20-\x7e]+$/; // what an HTTP header can carry as it is

const form = $("options");
const fields = {
  width: $("width"),
  height: $("height"),
  fit: $("fit"),
  position: $("position"),
  format: $("format"),
  quality: $("quality"),
  enlarge: $("enlarge"),
};

const state = {
  file: null, // the chosen File
  fileUrl: "", // its object URL
  probe: null, // POST /probe's answer
  probeOk: false,
  planTimer: 0,
  planAbort: null,
  planOk: true, // false while the dry run says the form cannot be made
  running: false,
  history: [], // {id, job, resultUrl, sourceUrl, sourceName, probe, serverMs, totalMs}
  shown: null, // the history entry on screen
  statusTimer: 0,
  apiKey: "", // sent as `Authorization: Bearer <key>` when set
  keyNeeded: false, // the server has asked for a key (a 401), or this tab kept one
  probeNeedsKey: false, // the chosen file's probe was refused for want of a key
};

// ---------------------------------------------------------------- helpers

function formatBytes(n) {
  if (n == null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10 * 1024 ? 1 : 0)} KB`;
  return `${(n / 1024 / 1024).toFixed(n < 10 * 1024 * 1024 ? 2 : 1)} MB`;
}

function formatMs(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function formatName(name) {
  return (name || "").toUpperCase().replace("JPG", "JPEG");
}

function uploadType(file) {
  return file.type && file.type.startsWith("image/") ? file.type : "application/octet-stream";
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The API's problem+json answer as {status, title, message, code, retryAfter}. */
async function problemOf(response) {
  let body = null;
  try {
    body = JSON.parse(await response.text());
  } catch {
    body = null;
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return {
    status: response.status,
    title: (body && body.title) || response.statusText || "Error",
    message: (body && (body.error || body.detail)) || `The server answered ${response.status}.`,
    code: (body && body.code) || "",
    retryAfter: Number.isFinite(retry) ? retry : null,
  };
}

function networkProblem(error) {
  return {
    status: 0,
    title: "No answer from the server",
    message: `The request did not reach the server or its answer was lost (${error.message}). Check that the service is running.`,
    code: "network_error",
    retryAfter: null,
  };
}

class ApiError extends Error {
  constructor(problem) {
    super(problem.message);
    this.problem = problem;
  }
}

// ------------------------------------------------------------- alerts

function showAlert(box, problem, { retry = null, busy = false } = {}) {
  box.replaceChildren();
  box.dataset.kind = busy ? "busy" : "error";
  const title = problem.status
    ? `${problem.title} (${problem.status})`
    : problem.title;
  const body = el(
    "div",
    { class: "alert-body" },
    el("p", { class: "alert-title", text: title }),
    el("p", { class: "alert-message", text: problem.message }),
    problem.hint ? el("p", { class: "alert-message", text: problem.hint }) : null,
    problem.code ? el("p", { class: "alert-code" }, "Code: ", el("code", { text: problem.code })) : null,
  );
  if (retry) {
    const button = el("button", { type: "button", class: "button subtle small", text: "Try again" });
    button.addEventListener("click", () => {
      hideAlert(box);
      retry();
    });
    body.append(el("div", { class: "alert-actions" }, button));
  }
  box.append(el("span", { class: "alert-icon", "aria-hidden": "true", text: "!" }), body);
  box.hidden = false;
  const rect = box.getBoundingClientRect();
  if (rect.top < 0 || rect.bottom > window.innerHeight) box.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

function hideAlert(box) {
  box.hidden = true;
  box.replaceChildren();
}

// ------------------------------------------------------------- API key

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage turned off: the key lasts until the page is left
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage turned off: state.apiKey still holds the key for this page
  }
}

/** The headers of an API request: `extra`, and the key's when there is one. */
function apiHeaders(extra = {}) {
  return state.apiKey ? { ...extra, Authorization: `Bearer ${state.apiKey}` } : extra;
}

/** The server's message as a sentence. */
function sentence(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

function showKeyMessage(kind, text) {
  const message = $("key-message");
  message.dataset.state = kind;
  message.textContent = text;
}

function showKeyPanel() {
  state.keyNeeded = true;
  $("key-panel").hidden = false;
  $("key-forget").hidden = !state.apiKey;
  $("curl").textContent = curlCommand();
}

/** An API call answered 401: ask for a key (another one, if one was sent). */
function needKey(problem) {
  const shown = !$("key-panel").hidden;
  showKeyPanel();
  showKeyMessage(state.apiKey ? "error" : "needed", sentence(problem.message));
  if (state.apiKey) $("api-key").setAttribute("aria-invalid", "true");
  if (!shown) $("api-key").focus();
}

/** A key kept by this tab (a reload): used at once, the field shown with it. */
function restoreKey() {
  const key = storedKey();
  if (!key) return;
  state.apiKey = key;
  $("api-key").value = key;
  showKeyPanel();
  showKeyMessage("ok", "Using the API key this tab kept.");
}

/** Check the key typed in (GET /jobs?limit=1 with it) and use it from now on if the server
 * takes it; a refused key is never kept. */
async function useKey() {
  const input = $("api-key");
  const key = input.value.trim();
  if (!key || !KEY_TEXT.test(key)) {
    showKeyMessage("error", key ? "An API key is plain ASCII: letters, digits and punctuation." : "Enter the API key first.");
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  $("key-use").disabled = true;
  showKeyMessage("pending", "Checking the key…");
  let response;
  try {
    response = await fetch("/jobs?limit=1", { cache: "no-store", headers: { Authorization: `Bearer ${key}` } });
  } catch (error) {
    showKeyMessage("error", networkProblem(error).message);
    return;
  } finally {
    $("key-use").disabled = false;
  }
  if (response.status === 401) {
    showKeyMessage("error", sentence((await problemOf(response)).message));
    input.setAttribute("aria-invalid", "true");
    input.select();
    return;
  }
  // Any other answer got past the key check, so the server knows the key.
  state.apiKey = key;
  storeKey(key);
  input.removeAttribute("aria-invalid");
  showKeyPanel();
  showKeyMessage("ok", "Key accepted.");
  resumeAfterKey();
}

function forgetKey() {
  state.apiKey = "";
  storeKey("");
  $("api-key").value = "";
  $("key-forget").hidden = true;
  showKeyMessage("needed", "Key forgotten: enter one to send more requests.");
  $("api-key").focus();
}

/** Run again what a missing key held up: the probe of the chosen file, or its dry run. */
function resumeAfterKey() {
  if (!state.file || state.running) return;
  if (state.probeOk) {
    schedulePlan(0);
    return;
  }
  if (!state.probeNeedsKey) return;
  state.probeNeedsKey = false;
  hideAlert($("source-alert"));
  $("source-loading").hidden = false;
  setPlan("muted", "Reading the image…");
  probe(state.file);
}

// ------------------------------------------------------------- health

async function refreshHealth() {
  const pill = $("health");
  const text = $("health-text");
  try {
    const response = await fetch("/health", { cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    const health = await response.json();
    const workers = `${health.pool_size} worker${health.pool_size === 1 ? "" : "s"}`;
    if (health.status !== "healthy") {
      pill.dataset.state = "down";
      text.textContent = "Stopping";
    } else if (health.queue_depth >= health.queue_capacity) {
      pill.dataset.state = "busy";
      text.textContent = `Queue full · ${workers}`;
    } else {
      pill.dataset.state = health.busy_workers > 0 || health.queue_depth > 0 ? "busy" : "ok";
      text.textContent = `Ready · ${workers} · ${health.queue_depth} queued`;
    }
  } catch {
    pill.dataset.state = "down";
    text.textContent = "Unreachable";
  }
}

// ------------------------------------------------------------- choosing a file

function chooseFile(file) {
  if (!file) return;
  if (state.fileUrl && !state.history.some((h) => h.sourceUrl === state.fileUrl)) {
    URL.revokeObjectURL(state.fileUrl);
  }
  state.file = file;
  state.fileUrl = URL.createObjectURL(file);
  state.probe = null;
  state.probeOk = false;
  state.probeNeedsKey = false;
  hideAlert($("source-alert"));
  $("dropzone").hidden = true;
  $("source").hidden = false;
  $("source-name").textContent = file.name || "Pasted image";
  $("facts").replaceChildren();
  $("source-loading").hidden = false;
  const thumb = $("source-thumb");
  $("source-no-preview").hidden = true;
  thumb.hidden = false;
  thumb.src = state.fileUrl;
  thumb.alt = `Preview of ${file.name || "the pasted image"}`;
  updateSubmit();
  $("curl").textContent = curlCommand();
  setPlan("muted", "Reading the image…");
  probe(file);
}

async function probe(file) {
  let response;
  try {
    response = await fetch("/probe", {
      method: "POST",
      body: file,
      headers: apiHeaders({ "Content-Type": uploadType(file) }),
    });
  } catch (error) {
    if (state.file === file) probeFailed(networkProblem(error), file);
    return;
  }
  if (state.file !== file) return; // another file was chosen meanwhile
  if (!response.ok) {
    probeFailed(await problemOf(response), file);
    return;
  }
  const facts = await response.json();
  if (state.file !== file) return;
  state.probe = facts;
  state.probeOk = true;
  $("source-loading").hidden = true;
  renderFacts(facts);
  updateSubmit();
  schedulePlan(0);
}

function probeFailed(problem, file) {
  $("source-loading").hidden = true;
  state.probeOk = false;
  if (problem.status === 401) {
    // Not the file's fault: the probe runs again once a key is accepted.
    state.probeNeedsKey = true;
    needKey(problem);
    setPlan("muted", "Enter the server's API key to go on.");
    updateSubmit();
    return;
  }
  const message = problem.status === 415 || problem.status === 422
    ? { ...problem, title: "This file cannot be used" }
    : problem;
  showAlert($("source-alert"), message, { retry: problem.status === 0 || problem.status >= 500 ? () => chooseFile(file) : null });
  setPlan("muted", "Choose an image the service can read.");
  updateSubmit();
}

function renderFacts(facts) {
  const rows = [
    ["Format", formatName(facts.format)],
    ["Size", `${facts.width} × ${facts.height} px`],
    ["Orientation", ORIENTATIONS[facts.orientation] || `EXIF ${facts.orientation}`],
    ["Colour", `${facts.mode}${facts.has_alpha ? " · transparency" : ""}${facts.icc ? " · ICC profile" : ""}`],
    ["Frames", facts.animated ? `${facts.frames} (animated)` : String(facts.frames)],
    ["File", formatBytes(facts.bytes)],
  ];
  $("facts").replaceChildren(
    ...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]),
  );
}

function resetSource() {
  $("dropzone").hidden = false;
  $("source").hidden = true;
  $("file").value = "";
  hideAlert($("source-alert"));
  state.file = null;
  state.probe = null;
  state.probeOk = false;
  updateSubmit();
  setPlan("muted", "Choose an image to see what you will get.");
  $("file").focus();
}

// ------------------------------------------------------------- the form

function applyPreset(name) {
  const preset = PRESETS[name];
  if (!preset) return;
  fields.width.value = preset.width;
  fields.height.value = preset.height;
  fields.fit.value = preset.fit;
  fields.position.value = preset.position;
  fields.format.value = preset.format;
  fields.quality.value = preset.quality;
  fields.enlarge.checked = false;
  syncFields();
}

function syncFields() {
  const fit = fields.fit.value;
  const positioned = fit === "cover" || fit === "contain";
  fields.position.disabled = !positioned;
  fields.position.closest(".field").classList.toggle("is-disabled", !positioned);
  const format = fields.format.value;
  const lossy = format === "" || LOSSY.has(format);
  fields.quality.disabled = !lossy;
  fields.quality.closest(".field").classList.toggle("is-disabled", !lossy);
  fields.quality.placeholder = !lossy ? "lossless" : format ? `default (${DEFAULT_QUALITY[format]})` : "default";
  $("fit-help").textContent = FIT_HELP[fit] || "";
  $("curl").textContent = curlCommand();
}

function numberOf(input) {
  const text = input.value.trim();
  return text === "" ? null : Number(text);
}

/** The job document the form describes. */
function buildSpec() {
  const step = { op: "resize" };
  const width = numberOf(fields.width);
  const height = numberOf(fields.height);
  if (width !== null) step.width = width;
  if (height !== null) step.height = height;
  step.fit = fields.fit.value;
  if (!fields.position.disabled && fields.position.value !== "centre") step.position = fields.position.value;
  if (fields.enlarge.checked) step.enlarge = true;
  const spec = { steps: [step] };
  const output = {};
  if (fields.format.value) output.format = fields.format.value;
  const quality = numberOf(fields.quality);
  if (quality !== null && !fields.quality.disabled) output.quality = quality;
  if (Object.keys(output).length) spec.output = output;
  return spec;
}

/** What is wrong with the form before asking the server, or "". */
function formProblem() {
  for (const input of [fields.width, fields.height, fields.quality]) {
    if (input.validity.badInput) return `${input.labels[0].textContent} must be a number.`;
  }
  if (fields.width.value.trim() === "" && fields.height.value.trim() === "") {
    return "Give a width, a height, or both.";
  }
  return "";
}

function jobsUrl(spec, dryRun) {
  const query = new URLSearchParams({ spec: JSON.stringify(spec) });
  if (dryRun) query.set("dry_run", "true");
  return `/jobs?${query}`;
}

function curlCommand() {
  const name = (state.file && state.file.name) || "image.jpg";
  const type = state.file ? uploadType(state.file) : "image/jpeg";
  const quoted = (text) => `'${text.replaceAll("'", "'\\''")}'`;
  // The key itself never goes into the page's text: the shell fills it in.
  const auth = state.keyNeeded ? ['  -H "Authorization: Bearer $IMGJOBS_API_KEY" \\'] : [];
  return [
    `curl -s -X POST ${quoted(`${location.origin}/jobs`)} \\`,
    ...auth,
    `  -H ${quoted(`Content-Type: ${type}`)} --data-binary @${quoted(name)} \\`,
    `  --url-query ${quoted(`spec=${JSON.stringify(buildSpec())}`)}`,
  ].join("\n");
}

function formChanged(event) {
  if (event && event.target && event.target.name === "preset") {
    applyPreset(event.target.value);
  } else if (event && event.target && event.target.name !== "preset") {
    form.querySelector('input[name="preset"][value="custom"]').checked = true;
    syncFields();
  }
  fields.width.removeAttribute("aria-invalid");
  fields.height.removeAttribute("aria-invalid");
  schedulePlan(PLAN_DELAY_MS);
}

// ------------------------------------------------------------- dry run

function setPlan(kind, ...content) {
  const plan = $("plan");
  plan.dataset.state = kind;
  plan.replaceChildren(
    ...content.map((c) => (typeof c === "string" ? el("span", { class: kind === "muted" ? "muted" : "", text: c }) : c)),
  );
}

function schedulePlan(delay) {
  $("curl").textContent = curlCommand();
  clearTimeout(state.planTimer);
  if (state.planAbort) state.planAbort.abort();
  if (!state.file || !state.probeOk) return;
  const problem = formProblem();
  if (problem) {
    setPlan("error", problem);
    state.planOk = false;
    updateSubmit();
    return;
  }
  state.planOk = true;
  updateSubmit();
  setPlan("pending", el("span", { class: "spinner", "aria-hidden": "true" }), el("span", { class: "muted", text: "Checking…" }));
  state.planTimer = setTimeout(runPlan, delay);
}

async function runPlan() {
  const file = state.file;
  const controller = new AbortController();
  state.planAbort = controller;
  let response;
  try {
    response = await fetch(jobsUrl(buildSpec(), true), {
      method: "POST",
      body: file,
      headers: apiHeaders({ "Content-Type": uploadType(file) }),
      signal: controller.signal,
    });
  } catch (error) {
    if (controller.signal.aborted) return;
    setPlan("error", networkProblem(error).message);
    return;
  }
  if (controller.signal.aborted || state.file !== file) return;
  if (!response.ok) {
    const problem = await problemOf(response);
    if (controller.signal.aborted) return;
    if (problem.status === 401) needKey(problem);
    const match = /`steps\[0\]\.(width|height)`/.exec(problem.message);
    if (match) fields[match[1]].setAttribute("aria-invalid", "true");
    setPlan("error", problem.message);
    state.planOk = problem.status >= 500; // the job itself may still go through
    updateSubmit();
    return;
  }
  const answer = await response.json();
  if (controller.signal.aborted) return;
  const planned = answer.variants && (answer.variants.default || Object.values(answer.variants)[0]);
  if (!planned) {
    setPlan("muted", "The server planned no output.");
    return;
  }
  const source = state.probe;
  setPlan(
    "ok",
    el("span", { class: "muted", text: source ? `${source.width} × ${source.height}` : "" }),
    el("span", { class: "plan-arrow", "aria-hidden": "true", text: "→" }),
    el("span", { class: "visually-hidden", text: "becomes" }),
    el("span", { class: "plan-size", id: "plan-size", text: `${planned.exact ? "" : "up to "}${planned.width} × ${planned.height}` }),
    el("span", { class: "tag", text: formatName(planned.format) }),
  );
  state.planOk = true;
  updateSubmit();
}

function updateSubmit() {
  const ready = Boolean(state.file && state.probeOk && !state.running && state.planOk);
  $("submit").disabled = !ready;
}

// ------------------------------------------------------------- running a job

function setStatus(kind, text, started) {
  const status = $("job-status");
  clearInterval(state.statusTimer);
  status.dataset.state = kind;
  const label = el("span", { text });
  status.replaceChildren(...(kind === "busy" ? [el("span", { class: "spinner", "aria-hidden": "true" })] : []), label);
  if (kind === "busy" && started) {
    const tick = () => {
      label.textContent = `${text} ${((performance.now() - started) / 1000).toFixed(1)} s`;
    };
    tick();
    state.statusTimer = setInterval(tick, 100);
  }
}

function setRunning(running) {
  state.running = running;
  $("submit-spinner").hidden = !running;
  $("submit-text").textContent = running ? "Working…" : "Make image";
  updateSubmit();
}

async function submitJob() {
  if (state.running || !state.file) return;
  const file = state.file;
  const probe = state.probe;
  const sourceUrl = state.fileUrl;
  const spec = buildSpec();
  const started = performance.now();
  hideAlert($("job-alert"));
  setRunning(true);
  showPending(sourceUrl, probe);
  setStatus("busy", "Uploading…", started);
  const panel = $("result-title").closest(".panel");
  if (panel.getBoundingClientRect().top > window.innerHeight * 0.6) {
    panel.scrollIntoView({ behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth", block: "start" });
  }
  try {
    let response;
    try {
      response = await fetch(jobsUrl(spec, false), {
        method: "POST",
        body: file,
        headers: apiHeaders({ "Content-Type": uploadType(file) }),
      });
    } catch (error) {
      throw new ApiError(networkProblem(error));
    }
    if (!response.ok) throw new ApiError(await problemOf(response));
    const { job_id: id } = await response.json();
    setStatus("busy", "Queued…", started);
    const job = await followJob(id, started);
    if (job.status === "failed") {
      const error = job.error || { code: "failed", message: "The job failed." };
      throw new ApiError({ status: null, title: "The job failed", message: error.message, code: error.code, retryAfter: null });
    }
    const result = await fetchResult(job);
    const entry = {
      id,
      job,
      resultUrl: result.url,
      resultBytes: result.bytes,
      resultName: result.name,
      keyed: result.keyed,
      sourceUrl,
      sourceName: file.name || "image",
      probe,
      serverMs: Date.parse(job.updated_at) - Date.parse(job.created_at),
      totalMs: performance.now() - started,
    };
    addHistory(entry);
    showEntry(entry);
    setStatus("done", `Done in ${formatMs(entry.totalMs)}`);
  } catch (error) {
    const problem = error instanceof ApiError
      ? error.problem
      : { status: null, title: "Something went wrong", message: String(error && error.message ? error.message : error), code: "", retryAfter: null };
    if (problem.status === 401) needKey(problem);
    showFailure(problem);
  } finally {
    setRunning(false);
    refreshHealth();
  }
}

// Follows the job by its server-sent events (GET /jobs/{id}/events); falls back to
// long-polls if the stream breaks before the job ends. With an API key, long-polls only:
// an EventSource cannot send the Authorization header.
function followJob(id, started) {
  if (state.apiKey || typeof EventSource !== "function") return waitForJob(id, started);
  return new Promise((resolve, reject) => {
    const source = new EventSource(`/jobs/${encodeURIComponent(id)}/events`);
    let settled = false;
    const settle = () => {
      settled = true;
      source.close();
    };
    const onStatus = (event) => {
      const job = JSON.parse(event.data);
      if (job.status === "completed" || job.status === "failed") {
        settle();
        resolve(job);
      } else {
        setStatus("busy", job.status === "processing" ? "Processing…" : "Queued…", started);
      }
    };
    for (const name of ["pending", "processing", "completed", "failed"]) {
      source.addEventListener(name, onStatus);
    }
    source.addEventListener("deleted", () => {
      settle();
      reject(new ApiError({ status: 404, title: "Job deleted", message: "the job was deleted while it ran", code: "not_found", retryAfter: null }));
    });
    source.onerror = () => {
      if (settled) return;
      settle();
      waitForJob(id, started).then(resolve, reject);
    };
  });
}

async function waitForJob(id, started) {
  let failures = 0;
  for (;;) {
    let response;
    try {
      response = await fetch(`/jobs/${encodeURIComponent(id)}?wait=${WAIT_S}`, { cache: "no-store", headers: apiHeaders() });
    } catch (error) {
      failures += 1;
      if (failures > 5) throw new ApiError(networkProblem(error));
      await sleep(500 * failures);
      continue;
    }
    if (!response.ok) throw new ApiError(await problemOf(response));
    const job = await response.json();
    if (job.status === "completed" || job.status === "failed") return job;
    setStatus("busy", job.status === "processing" ? "Processing…" : "Queued…", started);
  }
}

/** The job's output as an object URL, with its size and the file name the server gives it;
 * `keyed`: fetched with an API key, so a plain link to the download would be refused. */
async function fetchResult(job) {
  const keyed = Boolean(state.apiKey);
  let response;
  try {
    response = await fetch(`/jobs/${encodeURIComponent(job.id)}/download`, { headers: apiHeaders() });
  } catch (error) {
    throw new ApiError(networkProblem(error));
  }
  if (!response.ok) throw new ApiError(await problemOf(response));
  const disposition = /filename="?([^";]+)"?/i.exec(response.headers.get("Content-Disposition") || "");
  const blob = await response.blob();
  return {
    url: URL.createObjectURL(blob),
    bytes: blob.size,
    name: disposition ? disposition[1] : `${job.id}.${job.output_format || "bin"}`,
    keyed,
  };
}

function showFailure(problem) {
  const busy = problem.status === 503;
  // After a 401, "Try again" once the key is in.
  const retryable = busy || problem.code === "network_error" || problem.status >= 500 || problem.status === 401;
  let shown = problem;
  if (busy && problem.code === "queue_full") {
    const wait = problem.retryAfter ? ` The server suggests trying again in ${problem.retryAfter} s.` : "";
    shown = { ...problem, title: "The queue is full", hint: `No job was created.${wait}` };
  }
  showAlert($("job-alert"), shown, { retry: retryable ? () => submitJob() : null, busy });
  setStatus(busy ? "waiting" : "failed", busy ? "Server busy" : "Failed");
  if (state.shown) showEntry(state.shown);
  else {
    $("compare").hidden = true;
    $("empty").hidden = false;
  }
}

// ------------------------------------------------------------- showing results

function showPending(sourceUrl, probe) {
  $("empty").hidden = true;
  $("compare").hidden = false;
  $("outcome").hidden = true;
  $("original-img").src = sourceUrl;
  $("original-frame").classList.toggle("checker", Boolean(probe && probe.has_alpha));
  $("result-frame").classList.remove("checker");
  $("original-meta").textContent = probe ? `${probe.width} × ${probe.height} · ${formatName(probe.format)} · ${formatBytes(probe.bytes)}` : "";
  $("result-img").hidden = true;
  $("result-img").removeAttribute("src");
  $("result-meta").textContent = "";
  $("result-overlay").hidden = false;
}

function resultFacts(entry) {
  const job = entry.job;
  const variant = job.variants && (job.variants.default || Object.values(job.variants)[0]);
  return {
    width: variant ? variant.width : job.result_width,
    height: variant ? variant.height : job.result_height,
    format: variant ? variant.format : job.output_format,
    bytes: variant ? variant.bytes : job.result_bytes ?? entry.resultBytes,
  };
}

function showEntry(entry) {
  state.shown = entry;
  const facts = resultFacts(entry);
  const probe = entry.probe;
  $("empty").hidden = true;
  $("compare").hidden = false;
  $("original-img").src = entry.sourceUrl;
  $("original-img").alt = `The original: ${entry.sourceName}`;
  const padded = entry.job.spec && JSON.stringify(entry.job.spec).includes('"contain"');
  $("original-frame").classList.toggle("checker", Boolean(probe && probe.has_alpha));
  $("result-frame").classList.toggle("checker", WITH_ALPHA.has(facts.format) && Boolean((probe && probe.has_alpha) || padded));
  $("original-meta").textContent = probe ? `${probe.width} × ${probe.height} · ${formatName(probe.format)} · ${formatBytes(probe.bytes)}` : "";
  const img = $("result-img");
  img.src = entry.resultUrl;
  img.alt = `The result: ${facts.width} × ${facts.height} ${formatName(facts.format)}`;
  img.hidden = false;
  $("result-overlay").hidden = true;
  $("result-meta").textContent = `${facts.width} × ${facts.height} · ${formatName(facts.format)} · ${formatBytes(facts.bytes)}`;

  const stats = [["Size", `${facts.width} × ${facts.height}`], ["Format", formatName(facts.format)], ["Bytes", formatBytes(facts.bytes)]];
  let saving = null;
  if (probe && probe.bytes && facts.bytes != null) {
    const change = (facts.bytes - probe.bytes) / probe.bytes;
    saving = `${change <= 0 ? "−" : "+"}${Math.abs(change * 100).toFixed(change > -0.1 && change < 0.1 ? 1 : 0)}%`;
    stats.push(["vs original", saving]);
  }
  stats.push(["Processing", formatMs(Math.max(0, entry.serverMs))]);
  $("stats").replaceChildren(
    ...stats.map(([name, value]) => el(
      "div",
      {},
      el("dt", { text: name }),
      el("dd", { class: name === "vs original" && value.startsWith("−") ? "good" : "", text: value }),
    )),
  );
  const download = $("download");
  if (entry.keyed) {
    // The file already fetched with the key: a link to the API would go without it.
    download.href = entry.resultUrl;
    download.download = entry.resultName;
  } else {
    download.href = `/jobs/${encodeURIComponent(entry.id)}/download`;
    download.download = ""; // the server's Content-Disposition names the file
  }
  $("download-text").textContent = `Download ${formatName(facts.format)} · ${formatBytes(facts.bytes)}`;
  $("outcome").hidden = false;
  for (const item of $("history").querySelectorAll(".history-item")) {
    item.setAttribute("aria-current", String(item.dataset.id === entry.id));
  }
}

function addHistory(entry) {
  state.history.unshift(entry);
  for (const old of state.history.splice(HISTORY_SIZE)) {
    URL.revokeObjectURL(old.resultUrl);
    if (old.sourceUrl !== state.fileUrl && !state.history.some((h) => h.sourceUrl === old.sourceUrl)) {
      URL.revokeObjectURL(old.sourceUrl);
    }
  }
  const list = $("history");
  list.replaceChildren(
    ...state.history.map((h) => {
      const facts = resultFacts(h);
      const button = el(
        "button",
        { type: "button", class: "history-item", "data-id": h.id, "aria-label": `Show ${facts.width} × ${facts.height} ${formatName(facts.format)} from ${h.sourceName}` },
        el("span", { class: "thumb checker" }, el("img", { src: h.resultUrl, alt: "" })),
        el("span", { class: "meta", text: `${facts.width} × ${facts.height}` }),
        el("span", { class: "meta", text: `${formatName(facts.format)} · ${formatBytes(facts.bytes)}` }),
      );
      button.addEventListener("click", () => showEntry(h));
      return el("li", {}, button);
    }),
  );
  $("history-block").hidden = state.history.length < 2;
}

// ------------------------------------------------------------- wiring

function wire() {
  const input = $("file");
  const dropzone = $("dropzone");
  input.addEventListener("change", () => chooseFile(input.files && input.files[0]));
  $("change").addEventListener("click", resetSource);

  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
  }
  // Dropping anywhere on the page takes the image (and never navigates away to it).
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file && !state.running) chooseFile(file);
  });
  window.addEventListener("paste", (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement && target.type !== "file") return;
    const file = [...(event.clipboardData ? event.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (file && !state.running) chooseFile(file);
  });

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useKey();
  });
  $("api-key").addEventListener("input", () => $("api-key").removeAttribute("aria-invalid"));
  $("key-forget").addEventListener("click", forgetKey);
  restoreKey();

  form.addEventListener("input", formChanged);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitJob();
  });

  applyPreset("thumbnail");
  refreshHealth();
  setInterval(() => {
    if (!document.hidden) refreshHealth();
  }, 15000);
}

wire();
