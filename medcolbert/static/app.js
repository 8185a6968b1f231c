// The search page of `medcolbert serve`: plain DOM, no build step, no third-party code. The API key, when the
// server needs one, lives in this page's memory only (never stored).
"use strict";
const $ = (id) => document.getElementById(id);
let apiKey = "";

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h["X-API-Key"] = apiKey;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function call(path, body) {
  const response = await fetch(path, body === undefined ? { headers: headers() } :
    { method: "POST", headers: headers(), body: JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    if (response.status === 401) $("key-label").hidden = false;
    const detail = data && data.detail !== undefined ? data.detail : response.statusText;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

async function loadInfo() {
  try {
    const info = await call("/info");
    $("status").textContent = `${info.documents} documents`;
    const fields = $("fields");
    fields.replaceChildren();
    const help = [];
    for (const [name, kinds] of Object.entries(info.fields)) {
      const option = document.createElement("option");
      option.value = `${name} = `;
      fields.appendChild(option);
      help.push(`${name} (${kinds.join(", ")})`);
    }
    $("field-help").textContent = help.length ? "fields: " + help.join("; ") : "";
    const mode = $("mode");
    mode.replaceChildren();
    for (const m of info.modes) {
      const option = document.createElement("option");
      option.value = m; option.textContent = m;
      mode.appendChild(option);
    }
    $("mode-label").hidden = info.modes.length < 2;
    showError("");
  } catch (err) {
    $("status").textContent = "not connected";
    showError(err.message);
  }
}

// The text with each highlighted span shaded by its weight (0-1), built as DOM nodes (never as HTML).
function shaded(text, highlights) {
  const out = document.createElement("div");
  out.className = "text";
  let at = 0;
  for (const h of highlights) {
    if (h.start < at) continue;
    out.appendChild(document.createTextNode(text.slice(at, h.start)));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(h.start, h.end);
    mark.style.background = `rgba(255, 196, 0, ${0.15 + 0.75 * h.weight})`;
    mark.title = `weight ${h.weight}`;
    out.appendChild(mark);
    at = h.end;
  }
  out.appendChild(document.createTextNode(text.slice(at)));
  return out;
}

function render(results) {
  const list = $("results");
  list.replaceChildren();
  if (!results.length) {
    const li = document.createElement("li");
    li.textContent = "No document matches.";
    list.appendChild(li);
    return;
  }
  for (const hit of results) {
    const li = document.createElement("li");
    li.className = "hit";
    const head = document.createElement("div");
    head.className = "hit-head";
    const id = document.createElement("span");
    id.className = "hit-id";
    const meta = hit.metadata || {};
    id.textContent = meta.title ? `${meta.title} (${hit.id})` : hit.id;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    head.append(id, score);
    li.appendChild(head);
    if (Object.keys(meta).length) {
      const m = document.createElement("div");
      m.className = "meta";
      m.textContent = Object.entries(meta).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("  ·  ");
      li.appendChild(m);
    }
    const why = hit.explanation;
    li.appendChild(shaded(hit.text || "", why ? why.highlights : []));
    if (why) {
      const line = document.createElement("div");
      line.className = "why";
      const words = why.groups.filter((g) => g.kind === "word").sort((a, b) => b.share - a.share).slice(0, 6);
      for (const g of words) {
        const s = document.createElement("span");
        const matched = [...new Set(g.matches.map((x) => x.document_token))].join(", ");
        s.textContent = `${g.text} ${(100 * g.share).toFixed(1)}% → ${matched}`;
        line.appendChild(s);
      }
      if (why.pooled) {
        const s = document.createElement("span");
        const total = why.maxsim + why.pooled.term;
        s.textContent = `pooled vector ${(100 * why.pooled.term / total).toFixed(1)}%`;
        line.appendChild(s);
      }
      li.appendChild(line);
    }
    list.appendChild(li);
  }
}

$("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  apiKey = $("key").value.trim();
  const body = { query: $("query").value, k: Number($("k").value), return_documents: true, explain: true };
  const where = $("where").value.trim();
  if (where) body.where = where;
  if (!$("mode-label").hidden) body.mode = $("mode").value;
  $("go").disabled = true;
  try {
    const data = await call("/search", body);
    showError("");
    render(data.results);
    if ($("status").textContent === "not connected") loadInfo();
  } catch (err) {
    $("results").replaceChildren();
    showError(err.message);
  } finally {
    $("go").disabled = false;
  }
});

loadInfo();
