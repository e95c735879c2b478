// parley reports: the list of sessions and one session's report, drawn from the JSON API
// (charts with uPlot, vendored in /static/vendor).

const $ = (id) => document.getElementById(id);
const KEY = "parley.apiKey";
const COLORS = ["#60a5fa", "#f472b6", "#34d399", "#fbbf24", "#a78bfa", "#f87171", "#22d3ee", "#fb923c"];
let nextCursor = null;

function apiKey() {
  return $("api-key").value.trim();
}

async function api(path) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${apiKey()}` } });
  let data = null;
  try {
    data = await res.json();
  } catch {
    /* not JSON */
  }
  if (!res.ok) {
    const err = data && data.error;
    throw new Error(res.status === 401 ? "The API key was not accepted." : err ? err.message : `HTTP ${res.status}`);
  }
  return data;
}

function showError(err) {
  $("reports-error").hidden = !err;
  $("reports-error").textContent = err ? err.message || String(err) : "";
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function duration(seconds) {
  if (seconds == null) return "—";
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  return m ? `${m} min ${s} s` : `${s} s`;
}

function score(value) {
  if (value == null) return el("span", { class: "muted-text" }, "—");
  const cls = value >= 4 ? "score-good" : value >= 3 ? "score-fair" : "score-poor";
  return el("span", { class: cls }, value.toFixed(2));
}

// ---------------------------------------------------------------- the list

function listQuery(cursor) {
  const q = new URLSearchParams({ limit: "25" });
  const conversation = $("conversation-id").value.trim();
  if (conversation) q.set("conversation_id", conversation);
  for (const name of ["from", "to"]) {
    const value = $(name).value;
    if (value) q.set(name, new Date(value).toISOString());
  }
  if (cursor) q.set("cursor", cursor);
  return `/api/v1/reports?${q}`;
}

async function loadList(more = false) {
  showError(null);
  localStorage.setItem(KEY, apiKey());
  const data = await api(listQuery(more ? nextCursor : null));
  const body = $("list-body");
  if (!more) body.replaceChildren();
  for (const r of data.reports) {
    body.append(
      el("tr", {},
        el("td", {}, when(r.started_at || r.created_at)),
        el("td", {}, el("code", {}, r.conversation_id)),
        el("td", {}, duration(r.duration_seconds)),
        el("td", {}, String(r.participants)),
        el("td", {}, score(r.worst_score)),
        el("td", {}, (r.network_paths || []).join(", ") || "—"),
        el("td", {}, r.recorded ? "yes" : "no"),
        el("td", {}, el("a", { href: `/reports/${encodeURIComponent(r.session_id)}`, class: "btn small" }, "Report")),
      ),
    );
  }
  if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: "8", class: "empty" }, "No sessions in this range.")));
  nextCursor = data.next_cursor;
  $("more-button").hidden = !nextCursor;
}

// ---------------------------------------------------------------- one session

function seriesOf(samples, field) {
  // one series per (track kind, leg): [[times], [values]]
  const groups = new Map();
  for (const s of samples) {
    const key = `${s.kind} ${s.leg}`;
    if (!groups.has(key)) groups.set(key, [[], []]);
    const g = groups.get(key);
    g[0].push(Date.parse(s.at) / 1000);
    g[1].push(s[field] ?? null);
  }
  return groups;
}

function chart(container, title, groups, names, yRange) {
  if (!groups.size) return;
  const keys = [...groups.keys()];
  const data = uPlot.join(keys.map((k) => groups.get(k)));
  const box = el("div", { class: "chart" }, el("div", { class: "chart-title" }, title));
  container.append(box);
  const width = Math.max(320, Math.min(520, box.clientWidth || 480));
  new uPlot(
    {
      width,
      height: 180,
      legend: { live: false },
      scales: { x: { time: true }, y: yRange ? { range: yRange } : {} },
      axes: [{ stroke: "#9ca3af", grid: { stroke: "#37415155" } }, { stroke: "#9ca3af", grid: { stroke: "#37415155" } }],
      series: [{}, ...keys.map((k, i) => ({ label: names(k), stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))],
    },
    data,
    box,
  );
}

async function loadDetail(sessionId) {
  showError(null);
  $("list").hidden = true;
  $("detail").hidden = false;
  const report = await api(`/api/v1/sessions/${encodeURIComponent(sessionId)}/report`);
  const s = report.summary;
  const people = new Map(report.participants.map((p) => [p.participant_id, p]));
  const nameOf = (id) => (people.get(id) ? people.get(id).name : id);
  $("detail-title").textContent = `Session ${s.session_id} · ${s.conversation_id}`;
  $("detail-summary").textContent =
    `${when(s.started_at || s.created_at)} · ${duration(s.duration_seconds)} · ${s.participants} participants · ` +
    `worst quality ${s.worst_score == null ? "—" : s.worst_score.toFixed(2)} (MOS 1–4.5) · ` +
    `ended: ${s.end_reason || "not yet"} · overlap ${report.talk.overlap_seconds.toFixed(1)} s`;
  $("csv-link").href = "#";
  $("csv-link").onclick = async (ev) => {
    ev.preventDefault();
    const res = await fetch(`/api/v1/sessions/${encodeURIComponent(sessionId)}/report?format=csv`, {
      headers: { Authorization: `Bearer ${apiKey()}` },
    });
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: `${sessionId}-samples.csv` });
    a.click();
    URL.revokeObjectURL(url);
  };

  const body = $("participants-body");
  body.replaceChildren();
  for (const p of report.participants) {
    const path = p.network_path ? `${p.network_path}${p.turn_server ? ` (${p.turn_server})` : ""}` : "—";
    body.append(
      el("tr", {},
        el("td", {}, p.name),
        el("td", {}, p.role),
        el("td", {}, path),
        el("td", {}, `${p.talk.seconds.toFixed(1)} s`),
        el("td", {}, `${Math.round(p.talk.share * 100)} %`),
        el("td", {}, `${p.talk.overlap_seconds.toFixed(1)} s`),
        el("td", {}, String(p.connections.length)),
      ),
    );
  }

  const charts = $("charts");
  charts.replaceChildren();
  for (const p of report.participants) {
    const mine = report.samples.filter((x) => x.participant_id === p.participant_id);
    if (!mine.length) continue;
    const card = el("div", { class: "card chart-card" }, el("h3", {}, `${p.name}'s tracks`));
    const row = el("div", { class: "charts" });
    card.append(row);
    charts.append(card);
    const label = (key) => {
      const [kind, leg] = key.split(" ");
      return leg === "up" ? `${kind} ↑ to relay` : `${kind} → ${nameOf(leg)}`;
    };
    chart(row, "Quality (MOS)", seriesOf(mine, "score"), label, [1, 4.5]);
    chart(row, "Loss (%)", seriesOf(mine, "loss"), label, [0, null]);
    chart(row, "Round-trip time (ms)", seriesOf(mine, "rtt_ms"), label, [0, null]);
    chart(row, "Bitrate (kbit/s)", seriesOf(mine.map((x) => ({ ...x, kbps: x.bitrate / 1000 })), "kbps"), label, [0, null]);
  }

  const timeline = $("timeline");
  timeline.replaceChildren();
  for (const e of report.timeline) {
    const who = e.participant_id ? ` · ${nameOf(e.participant_id)}` : "";
    timeline.append(el("li", {}, el("time", {}, when(e.at)), `${e.type}${who}`));
  }
  document.body.dataset.ready = "true";
}

// ---------------------------------------------------------------- start

async function guard(fn) {
  try {
    await fn();
  } catch (err) {
    showError(err);
  }
}

$("api-key").value = localStorage.getItem(KEY) || "";
const match = location.pathname.match(/^\/reports\/([^/]+)\/?$/);
$("filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (match) {
    localStorage.setItem(KEY, apiKey());
    guard(() => loadDetail(decodeURIComponent(match[1])));
  } else guard(() => loadList(false));
});
$("more-button").addEventListener("click", () => guard(() => loadList(true)));
if (match) {
  $("show-button").textContent = "Show report";
  if (apiKey()) guard(() => loadDetail(decodeURIComponent(match[1])));
} else if (apiKey()) guard(() => loadList(false));
