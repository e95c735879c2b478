// parley agent console: try parley without a chat system. Uses the public HTTP API only.

const $ = (id) => document.getElementById(id);
const KEY = "parley.apiKey";
let current = null; // the last created session

function apiKey() {
  return $("api-key").value.trim();
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${apiKey()}`,
      ...(body ? { "Content-Type": "application/json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (res.status === 204) return null;
  let data = null;
  try {
    data = await res.json();
  } catch {
    /* not JSON */
  }
  if (!res.ok) {
    const err = data && data.error;
    const text = res.status === 401 ? "The API key was not accepted." : err ? err.message || err.code : `HTTP ${res.status}`;
    throw new Error(text);
  }
  return data;
}

function showError(err) {
  $("console-error").hidden = !err;
  $("console-error").textContent = err ? err.message || String(err) : "";
}

async function guard(fn) {
  showError(null);
  try {
    await fn();
  } catch (err) {
    showError(err);
  }
}

function fmtTime(value) {
  if (!value) return "";
  const d = new Date(typeof value === "number" ? value * 1000 : value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString();
}

async function createSession() {
  localStorage.setItem(KEY, apiKey());
  const body = { conversation_id: $("conversation-id").value.trim() };
  const max = parseInt($("max-participants").value, 10);
  if (max) body.max_participants = max;
  const s = await api("POST", "/api/v1/sessions", body);
  current = s;
  $("result-empty").hidden = true;
  $("result-body").hidden = false;
  $("result-session").textContent = s.session_id;
  $("result-expires").textContent = fmtTime(s.expires_at);
  $("agent-url").value = s.agent_url;
  $("agent-open").href = s.agent_url;
  $("customer-url").value = s.customer_url;
  $("invite-result").hidden = true;
  await loadHistory();
}

async function loadHistory() {
  const conv = $("conversation-id").value.trim();
  if (!conv) return;
  localStorage.setItem(KEY, apiKey());
  $("history-conversation").textContent = conv;
  const data = await api("GET", `/api/v1/conversations/${encodeURIComponent(conv)}/sessions`);
  const body = $("history-body");
  body.replaceChildren();
  const sessions = (data && data.sessions) || [];
  if (!sessions.length) {
    body.innerHTML = `<tr><td colspan="4" class="empty">No sessions for this conversation yet.</td></tr>`;
    return;
  }
  for (const s of sessions) {
    const tr = document.createElement("tr");
    tr.dataset.sessionId = s.session_id;
    const people = (s.participants || [])
      .map((p) => `${p.name || "?"} (${p.role})${p.left_at ? " · left" : ""}`)
      .join(", ");
    tr.innerHTML = `<td><code></code></td><td><span class="pill"></span></td><td class="people"></td><td></td>`;
    tr.querySelector("code").textContent = s.session_id;
    tr.querySelector(".pill").textContent = s.state;
    tr.querySelector(".pill").dataset.state = s.state;
    tr.querySelector(".people").textContent = people || "nobody yet";
    if (s.state !== "ended") {
      const b = document.createElement("button");
      b.className = "btn small danger";
      b.type = "button";
      b.textContent = "End";
      b.setAttribute("aria-label", `End session ${s.session_id}`);
      b.addEventListener("click", () => guard(() => endSession(s.session_id)));
      tr.lastElementChild.append(b);
    }
    body.append(tr);
  }
}

async function endSession(id) {
  await api("DELETE", `/api/v1/sessions/${encodeURIComponent(id)}`);
  if (current && current.session_id === id) $("end-session-button").disabled = true;
  await loadHistory();
}

async function invite() {
  if (!current) return;
  const r = await api("POST", `/api/v1/sessions/${encodeURIComponent(current.session_id)}/invites`, {
    role: $("invite-role").value,
    name: $("invite-name").value.trim() || "Guest",
  });
  $("invite-url").value = r.url;
  $("invite-result").hidden = false;
}

async function copy(button) {
  const input = $(button.dataset.copy);
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.select();
    document.execCommand("copy");
  }
  const old = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = old), 1500);
}

async function health() {
  try {
    const res = await fetch("/healthz");
    $("health").dataset.state = res.ok ? "connected" : "failed";
    $("health-text").textContent = res.ok ? "Service up" : `Service: HTTP ${res.status}`;
  } catch {
    $("health").dataset.state = "failed";
    $("health-text").textContent = "Service unreachable";
  }
}

$("api-key").value = localStorage.getItem(KEY) || "";
$("conversation-id").value = localStorage.getItem("parley.conversation") || "";
$("conversation-id").addEventListener("change", () =>
  localStorage.setItem("parley.conversation", $("conversation-id").value.trim()),
);
$("session-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  $("end-session-button").disabled = false;
  guard(createSession);
});
$("history-button").addEventListener("click", () => guard(loadHistory));
$("refresh-button").addEventListener("click", () => guard(loadHistory));
$("end-session-button").addEventListener("click", () => current && guard(() => endSession(current.session_id)));
$("invite-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  guard(invite);
});
for (const b of document.querySelectorAll("button.copy")) b.addEventListener("click", () => copy(b));
health();
if (apiKey() && $("conversation-id").value) guard(loadHistory);
