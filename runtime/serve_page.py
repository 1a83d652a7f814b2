"""The page ``rnnkit serve`` shows at ``/``: one self-contained HTML document (inline CSS and JS, no
external assets, so it works on a machine without internet) that talks to the JSON API.

It lists the server's models (``GET /v1/models``); for a classifier it shows the label and every
label's probability, and highlights the words when the model can explain (``/explain``); for a
tagger each word with its tag; for a seq2seq model the output (a G2P bundle: words -> phonemes);
for a language model the continuation as it streams (``/generate``, server-sent events read from
``fetch``, since ``EventSource`` cannot POST).  Element ids (``model``, ``text``, ``run``,
``result``, ``status``) are what tests/test_serve_browser.py drives.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rnnkit serve</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
  main { max-width: 760px; margin: 0 auto; padding: 20px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  .sub { color: #5b6475; margin-bottom: 16px; }
  .card { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 16px; margin-bottom: 14px; }
  label { font-weight: 600; margin-right: 8px; }
  select, input, textarea, button { font: inherit; }
  textarea { width: 100%; box-sizing: border-box; min-height: 70px; margin: 10px 0; padding: 8px; }
  button { background: #2456c7; color: #fff; border: 0; border-radius: 6px; padding: 7px 16px; cursor: pointer; }
  button.secondary { background: #5b6475; }
  button:disabled { opacity: .5; cursor: default; }
  .row { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
  .opts input { width: 70px; }
  #status { color: #5b6475; min-height: 1.4em; margin-top: 8px; }
  #status.err { color: #b3261e; }
  .label { font-size: 22px; font-weight: 700; }
  .bar { height: 8px; background: #2456c7; border-radius: 4px; }
  .scores td { padding: 2px 8px 2px 0; }
  .tok { display: inline-block; margin: 2px; padding: 2px 5px; border-radius: 4px; }
  .tag { display: block; font-size: 11px; color: #5b6475; text-align: center; }
  .stream { white-space: pre-wrap; font-family: ui-monospace, monospace; }
  .mono { font-family: ui-monospace, monospace; font-size: 17px; }
  #keyrow { display: none; }
</style>
</head>
<body>
<main>
  <h1>rnnkit serve</h1>
  <div class="sub">Type text, pick a model, run it. The same JSON API is at <a href="/docs">/docs</a>.</div>
  <div class="card">
    <div class="row"><label for="model">Model</label><select id="model"></select><span id="task"></span></div>
    <div class="row" id="keyrow"><label for="key">API key</label><input id="key" type="password"></div>
    <textarea id="text" placeholder="Type a sentence (or a word, for a G2P model)"></textarea>
    <div class="row">
      <button id="run">Run</button>
      <button id="explain" class="secondary" style="display:none">Highlight words</button>
      <span class="opts" id="genopts" style="display:none">
        tokens <input id="max_tokens" type="number" value="200" min="0">
        temperature <input id="temperature" type="number" value="0.8" step="0.1" min="0">
        seed <input id="seed" type="number" value="1" min="0">
      </span>
    </div>
    <div id="status"></div>
  </div>
  <div class="card" id="result" aria-live="polite"></div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let models = {};

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("key").value;
  if (key) { h["Authorization"] = "Bearer " + key; sessionStorage.setItem("rnnkit-key", key); }
  return h;
}
function status(text, error) { $("status").textContent = text || ""; $("status").className = error ? "err" : ""; }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
async function api(path, body) {
  const r = await fetch(path, {method: "POST", headers: headers(), body: JSON.stringify(body)});
  const data = await r.json().catch(() => ({error: r.status + " " + r.statusText}));
  if (!r.ok) throw new Error(data.error || (r.status + " " + r.statusText));
  return data;
}
async function loadModels() {
  const health = await (await fetch("/health")).json();
  if (health.auth) {
    $("keyrow").style.display = "flex";
    $("key").value = sessionStorage.getItem("rnnkit-key") || "";
  }
  const r = await fetch("/v1/models", {headers: headers()});
  const data = await r.json();
  if (!r.ok) { status(data.error, true); return; }
  $("model").replaceChildren();
  for (const m of data.models) {
    models[m.name] = m;
    $("model").append(new Option(m.name + " (" + m.task + ")", m.name));
  }
  pick();
}
function pick() {
  const m = models[$("model").value];
  if (!m) return;
  const lm = m.task === "lm";
  $("genopts").style.display = lm ? "inline" : "none";
  $("explain").style.display = m.endpoints.includes("explain") ? "inline-block" : "none";
  $("run").textContent = {classify: "Classify", tag: "Tag", seq2seq: "Convert", lm: "Generate"}[m.task] || "Run";
  $("task").textContent = m.labels && m.task === "classify" ? "labels: " + m.labels.join(", ") : "";
  $("result").replaceChildren();
}
function showClassify(o) {
  const box = el("div");
  box.append(el("div", "label", o.label), el("div", "", "probability " + o.score.toFixed(3)));
  const table = el("table", "scores");
  for (const [label, p] of Object.entries(o.scores)) {
    const tr = el("tr");
    const bar = el("div", "bar"); bar.style.width = Math.round(p * 200) + "px";
    const cell = el("td"); cell.append(bar);
    tr.append(el("td", "", label), el("td", "", p.toFixed(3)), cell);
    table.append(tr);
  }
  box.append(table);
  return box;
}
function showTags(o) {
  const box = el("div");
  o.tokens.forEach((t, i) => {
    const span = el("span", "tok", t); span.style.background = "#eef1f6";
    span.append(el("span", "tag", o.tags[i])); box.append(span);
  });
  return box;
}
function showSeq2seq(o) {
  const box = el("div");
  box.append(el("div", "", o.input + " \\u2192"), el("div", "mono", o.output));
  if (o.unknown && o.unknown.length) box.append(el("div", "", "not in the model's alphabet: " + o.unknown.join(" ")));
  return box;
}
function showExplanation(x) {
  const box = el("div");
  const top = Math.max(1e-9, ...x.scores.map(Math.abs));
  x.tokens.forEach((t, i) => {
    const s = x.scores[i] / top;
    const span = el("span", "tok", t);
    span.title = x.scores[i].toFixed(4);
    span.style.background = s >= 0 ? "rgba(36,86,199," + (0.85 * s) + ")" : "rgba(179,38,30," + (-0.85 * s) + ")";
    if (Math.abs(s) > 0.55) span.style.color = "#fff";
    box.append(span);
  });
  const p = x.prediction;
  const what = p && typeof p === "object" ? (p.label || "") : (p || "");
  const legend = what ? "; blue words push toward " + what + ", red words away from it" : "";
  box.append(el("div", "sub", "method: " + x.method + legend));
  return box;
}
async function generate(m, text) {
  const body = {prompt: text, max_tokens: +$("max_tokens").value, temperature: +$("temperature").value,
                seed: $("seed").value === "" ? null : +$("seed").value, stream: true};
  const r = await fetch("/v1/models/" + encodeURIComponent(m.name) + "/generate",
                        {method: "POST", headers: headers(), body: JSON.stringify(body)});
  if (!r.ok) { const d = await r.json(); throw new Error(d.error); }
  const out = el("div", "stream", text);
  $("result").replaceChildren(out);
  const sep = m.tokenizer === "char" ? "" : " ";
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", n = 0;
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
      const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const name = (event.match(/^event: (.*)$/m) || [])[1] || "message";
      const data = JSON.parse((event.match(/^data: (.*)$/m) || [])[1] || "{}");
      if (name === "error") throw new Error(data.error);
      if (name === "done") { status(data.tokens + " tokens"); out.dataset.done = "1"; continue; }
      out.textContent += sep + data.token; n += 1;
      status(n + " tokens\\u2026");
    }
  }
}
async function run(explain) {
  const m = models[$("model").value];
  const text = $("text").value;
  if (!m || !text.trim()) { status("type some text first", true); return; }
  $("run").disabled = $("explain").disabled = true;
  status("running\\u2026");
  try {
    if (m.task === "lm") { await generate(m, text); return; }
    const base = "/v1/models/" + encodeURIComponent(m.name);
    const data = await api(base + (explain ? "/explain" : "/predict"), {inputs: text});
    const o = data.outputs[0];
    const view = explain ? showExplanation(o)
      : {classify: showClassify, tag: showTags, seq2seq: showSeq2seq}[m.task](o);
    $("result").replaceChildren(view);
    $("result").dataset.answer = JSON.stringify(o);
    status("");
  } catch (e) {
    status(e.message, true);
  } finally {
    $("run").disabled = $("explain").disabled = false;
  }
}
$("model").addEventListener("change", pick);
$("run").addEventListener("click", () => run(false));
$("explain").addEventListener("click", () => run(true));
$("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(false); });
$("key").addEventListener("change", loadModels);
loadModels().catch((e) => status(e.message, true));
</script>
</body>
</html>
"""
