"use strict";
// The review page of `draem serve`: polls the JSON API; every text from the server goes in via textContent.

const API = "/api/v1";
const state = { selected: null, listKey: "", thresholds: null, blobs: new Map() };
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem("draem-token") || ""; }

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", "Bearer " + token());
  const operator = $("operator").value.trim();
  if (operator) headers.set("X-Operator", operator);
  const response = await fetch(API + path, { ...options, headers });
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new Error("the service needs an access token");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(response.status + ": " + detail);
  }
  return response;
}

async function picture(id, kind) {
  const key = id + "/" + kind;
  if (!state.blobs.has(key)) {
    const response = await api("/inspections/" + encodeURIComponent(id) + "/" + kind);
    state.blobs.set(key, URL.createObjectURL(await response.blob()));
  }
  return state.blobs.get(key);
}

function fmt(value, digits = 4) { return value === null || value === undefined ? "–" : Number(value).toFixed(digits); }

function when(text) { return new Date(text).toLocaleString(); }

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function refreshList() {
  const filter = $("filter").value;
  const response = await api("/inspections?limit=40" + (filter ? "&" + filter : ""));
  const page = await response.json();
  const key = JSON.stringify(page.inspections);
  if (key === state.listKey) return;
  state.listKey = key;
  const list = $("list");
  list.replaceChildren();
  for (const item of page.inspections) {
    const entry = element("li", "item " + (item.decision || "undecided"));
    entry.dataset.id = item.id;
    entry.dataset.testid = "item";
    const thumb = element("img", "thumb");
    thumb.alt = "overlay";
    if (item.files_kept) picture(item.id, "thumbnail").then((url) => { thumb.src = url; }).catch(() => {});
    const text = element("div", "text");
    text.append(element("b", "", (item.decision || "no decision") + " · " + fmt(item.score)),
                element("span", "", when(item.timestamp)),
                element("span", "", [item.source, item.part_id, item.file_name].filter(Boolean).join(" · ")));
    if (item.review) text.append(element("span", "verdict", "reviewed: " + item.review.verdict));
    entry.append(thumb, text);
    entry.addEventListener("click", () => select(item.id));
    if (item.id === state.selected) entry.classList.add("selected");
    list.append(entry);
  }
  forgetPictures(new Set([...page.inspections.map((item) => item.id), state.selected]));
}

function forgetPictures(keep) {
  // Release the pictures of inspections no longer shown, so that a page left open all day stays small.
  for (const [key, url] of state.blobs) {
    if (!keep.has(key.split("/")[0])) {
      URL.revokeObjectURL(url);
      state.blobs.delete(key);
    }
  }
}

async function select(id) {
  state.selected = id;
  for (const node of document.querySelectorAll("#list li")) node.classList.toggle("selected", node.dataset.id === id);
  const item = await (await api("/inspections/" + encodeURIComponent(id))).json();
  $("detail").hidden = false;
  $("detail-title").textContent = (item.decision || "no decision") + " · " + item.id;
  for (const kind of ["image", "overlay", "map"]) {
    const image = $("detail-" + kind);
    image.removeAttribute("src");
    if (item.files_kept) picture(item.id, kind).then((url) => { image.src = url; }).catch(() => {});
  }
  const threshold = item.threshold;
  $("detail-score").textContent = "score " + fmt(item.score) + " against threshold " + fmt(threshold) +
    (item.normalized_score === null ? "" : " (normalised " + fmt(item.normalized_score, 3) + ")") +
    (item.defect_area === null ? "" : " · defect area " + (100 * item.defect_area).toFixed(2) + " %");
  const span = Math.max(item.score, threshold || 0) * 1.25 || 1;
  $("score-bar").style.width = Math.min(100, 100 * item.score / span) + "%";
  $("threshold-mark").style.left = threshold === null ? "-10px" : Math.min(100, 100 * threshold / span) + "%";
  $("detail-meta").textContent = [when(item.timestamp), item.source, item.part_id, item.file_name,
    "model " + item.model_version].filter(Boolean).join(" · ");
  $("review-status").textContent = item.review ? "reviewed " + item.review.verdict + " by " +
    (item.review.operator || "anonymous") + (item.review.note ? ": " + item.review.note : "") : "not reviewed";
}

async function review(verdict) {
  if (!state.selected) return;
  try {
    await api("/inspections/" + encodeURIComponent(state.selected) + "/review", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ verdict, note: $("review-note").value }) });
    $("review-note").value = "";
    await select(state.selected);
    await Promise.all([poll(), refreshThresholds()]);
  } catch (e) { $("review-status").textContent = e.message; }
}

function effect(threshold) {
  const reviewed = state.thresholds ? state.thresholds.reviewed : [];
  const defective = reviewed.filter((r) => r.verdict === "defective");
  const good = reviewed.filter((r) => r.verdict === "good");
  const caught = defective.filter((r) => r.score >= threshold).length;
  const rejected = good.filter((r) => r.score >= threshold).length;
  $("threshold-effect").textContent = "at " + fmt(threshold) + ": " + caught + " of " + defective.length +
    " reviewed defects caught, " + rejected + " of " + good.length + " reviewed good parts rejected";
}

async function refreshThresholds() {
  const data = await (await api("/thresholds")).json();
  state.thresholds = data;
  const scores = data.reviewed.map((r) => r.score);
  for (const value of [data.threshold, data.calibrated_threshold, data.score_low, data.score_high]) {
    if (value !== null) scores.push(value);
  }
  const low = scores.length ? Math.min(...scores) : 0;
  const high = scores.length ? Math.max(...scores) : 1;
  const slider = $("threshold-slider");
  const margin = (high - low) * 0.05 || 0.05;
  slider.min = low - margin;
  slider.max = high + margin;
  slider.step = (high - low + 2 * margin) / 1000;
  if (!slider.dataset.touched) slider.value = data.threshold === null ? (low + high) / 2 : data.threshold;
  $("threshold-current").textContent = fmt(data.threshold);
  $("threshold-calibrated").textContent = fmt(data.calibrated_threshold);
  const history = $("threshold-history");
  history.replaceChildren(...data.history.slice(0, 5).map((h) =>
    element("li", "", fmt(h.threshold) + " by " + (h.operator || "anonymous") + ", " + when(h.timestamp))));
  effect(Number(slider.value));
}

async function saveThreshold() {
  const value = Number($("threshold-slider").value);
  try {
    await api("/thresholds", { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify({ threshold: value }) });
    delete $("threshold-slider").dataset.touched;
    $("threshold-status").textContent = "saved " + fmt(value) + "; new inspections use it";
    await refreshThresholds();
  } catch (e) { $("threshold-status").textContent = e.message; }
}

async function upload(event) {
  event.preventDefault();
  const form = new FormData();
  for (const file of $("upload-files").files) form.append("images", file);
  const source = $("upload-source").value.trim();
  if (source) form.append("source", source);
  $("upload-status").textContent = "inspecting…";
  try {
    const answer = await (await api("/inspect", { method: "POST", body: form })).json();
    const first = answer.inspections[0];
    $("upload-status").textContent = answer.inspections.map((i) => (i.decision || "no decision") + " " +
      fmt(i.score)).join(", ");
    await poll();
    await select(first.id);
  } catch (e) { $("upload-status").textContent = e.message; }
}

async function refreshCounts() {
  const metrics = await (await api("/metrics")).json();
  const hour = metrics.inspections.last_hour;
  const day = metrics.inspections.last_day;
  $("counts").textContent = "last hour: " + hour.total + " inspected, " + hour.defective + " defective · " +
    "last day: " + day.total + " inspected, " + day.defective + " defective";
}

async function poll() {
  try {
    await Promise.all([refreshList(), refreshCounts()]);
  } catch (e) { $("counts").textContent = e.message; }
}

function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("draem-token", $("token-input").value);
    $("token-form").hidden = true;
    poll();
    refreshThresholds().catch(() => {});
  });
  $("operator").value = sessionStorage.getItem("draem-operator") || "";
  $("operator").addEventListener("change", () => sessionStorage.setItem("draem-operator", $("operator").value));
  $("upload-form").addEventListener("submit", upload);
  $("filter").addEventListener("change", () => { state.listKey = ""; poll(); });
  for (const button of document.querySelectorAll("[data-verdict]")) {
    button.addEventListener("click", () => review(button.dataset.verdict));
  }
  $("threshold-slider").addEventListener("input", (event) => {
    event.target.dataset.touched = "1";
    effect(Number(event.target.value));
  });
  $("threshold-save").addEventListener("click", saveThreshold);
  if (document.body.dataset.tokenRequired === "true" && !token()) $("token-form").hidden = false;
  poll();
  refreshThresholds().catch(() => {});
  setInterval(poll, 2000);
}

start();
