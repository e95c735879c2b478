// parley join page: one participant of a relayed (SFU) video call.
//
// Two RTCPeerConnections per connection attempt, both to the relay only:
//   publish   page -> relay, the page offers (non-trickle: after ICE gathering)
//   subscribe relay -> page, the relay offers; `tracks` maps each mid to whose track it is
// Reconnect = a new attempt (new WebSocket, new peer connections) with the same token.
// The protocol is described in docs/browser.md.

import { hideRecording, initRecording, showRecording } from "./recording.js";

const GATHER_TIMEOUT_MS = 4000; // the relay is non-trickle: wait this long for candidates at most
const ANSWER_TIMEOUT_MS = 15000;
const WELCOME_TIMEOUT_MS = 15000;
const PC_DISCONNECTED_GRACE_MS = 4000; // "disconnected" this long means the path is gone
const STATS_INTERVAL_MS = 500;
const SPEAKING_LEVEL = 0.02; // inbound-rtp audioLevel (0..1) above which a tile shows "speaking"
const SILENT_AFTER_MS = 1500; // no audio packets this long: the remote mic is off
const FROZEN_AFTER_MS = 2000; // no decoded frames this long: the remote camera is off
const RETRY_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
// WebSocket close codes from the server (signaling/sessions.py); 4001 (media failed) reconnects
const CLOSE_REPLACED = 4000;
const CLOSE_SESSION_ENDED = 4002;
const CLOSE_TEST_DROP = 4099;

const $ = (id) => document.getElementById(id);
const token = decodeURIComponent(location.pathname.replace(/^.*\/join\//, "").replace(/\/+$/, ""));
const joinedKey = `parley.joined.${token}`; // sessionStorage: a reload rejoins by itself

// ---------------------------------------------------------------- state

const local = {
  mic: null, // MediaStreamTrack or null
  camera: null,
  screen: null,
  micMuted: false,
  cameraOff: false,
  noMedia: "", // why we have no mic/camera, shown in the lobby
};
let name = "";
let state = "idle";
let call = null; // the current attempt (see connect())
let attemptSeq = 0;
let retries = 0;
let retryTimer = null;
let statsTimer = null;
let mediaReady = Promise.resolve(); // the lobby's getUserMedia; joining waits for it
const roster = new Map(); // participant_id -> participant (others only)
const joinHistory = { participantId: null, role: null };

function setState(next, text) {
  state = next;
  const labels = {
    idle: "Not connected",
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    ended: "Session ended",
    left: "You left",
    failed: "Could not join",
  };
  $("status").dataset.state = next;
  $("status-text").textContent = text || labels[next] || next;
  document.body.dataset.state = next;
}

function show(section) {
  for (const id of ["lobby", "call", "after"]) $(id).hidden = id !== section;
}

function banner(text, action) {
  $("banner").hidden = !text;
  $("banner-text").textContent = text || "";
  const btn = $("banner-action");
  btn.hidden = !action;
  if (action) {
    btn.textContent = action.label;
    btn.onclick = action.run;
  }
}

// ---------------------------------------------------------------- local media (lobby)

function decodeTokenHint() {
  // Best effort, for the lobby text only: the relay verifies the token, we never do.
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(json);
  } catch {
    return {};
  }
}

function mediaErrorText(err, what) {
  if (!navigator.mediaDevices) {
    return "Camera and microphone need a secure (https) connection. You can still join to see and hear the others.";
  }
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return `Access to your ${what} was denied. Allow it in the browser's site settings and reload, or join now to see and hear the others.`;
    case "NotFoundError":
    case "OverconstrainedError":
      return `No ${what} was found. You can still join to see and hear the others.`;
    case "NotReadableError":
    case "AbortError":
      return `Your ${what} is in use by another application. Close it and reload, or join without it.`;
    default:
      return `Could not start your ${what}${err && err.message ? ` (${err.message})` : ""}.`;
  }
}

function constraints(kind) {
  const sel = kind === "audio" ? $("mic-select") : $("camera-select");
  const id = sel.value || localStorage.getItem(`parley.device.${kind}`) || "";
  const base =
    kind === "audio"
      ? { echoCancellation: true, noiseSuppression: true, autoGainControl: true }
      : { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
  return id ? { ...base, deviceId: { ideal: id } } : base;
}

async function getTrack(kind) {
  const stream = await navigator.mediaDevices.getUserMedia({ [kind]: constraints(kind) });
  return stream.getTracks()[0];
}

async function acquireMedia() {
  stopTrack("mic");
  stopTrack("camera");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    local.noMedia = mediaErrorText(null, "camera and microphone");
    renderLocal();
    return;
  }
  const problems = [];
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: constraints("audio"),
      video: constraints("video"),
    });
    local.mic = stream.getAudioTracks()[0] || null;
    local.camera = stream.getVideoTracks()[0] || null;
  } catch (both) {
    // one of them may still work: try each alone
    for (const [kind, slot, what] of [["audio", "mic", "microphone"], ["video", "camera", "camera"]]) {
      try {
        local[slot] = await getTrack(kind);
      } catch (err) {
        problems.push({ err, what });
      }
    }
    if (problems.length === 2 && problems[0].err.name === problems[1].err.name) {
      problems.splice(0, 2, { err: both, what: "camera and microphone" });
    }
  }
  local.noMedia = problems.map((p) => mediaErrorText(p.err, p.what)).join(" ");
  await listDevices();
  renderLocal();
}

function stopTrack(slot) {
  if (local[slot]) local[slot].stop();
  local[slot] = null;
}

function releaseMedia() {
  for (const slot of ["mic", "camera", "screen"]) stopTrack(slot);
  $("preview-video").srcObject = null;
  $("self-video").srcObject = null;
  stopMeter();
}

async function listDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, sel, track, fallback] of [
    ["videoinput", $("camera-select"), local.camera, "Camera"],
    ["audioinput", $("mic-select"), local.mic, "Microphone"],
  ]) {
    const list = devices.filter((d) => d.kind === kind && d.deviceId);
    const current = track ? track.getSettings().deviceId : sel.value;
    sel.replaceChildren();
    list.forEach((d, i) => sel.add(new Option(d.label || `${fallback} ${i + 1}`, d.deviceId)));
    if (!list.length) sel.add(new Option(`No ${fallback.toLowerCase()} found`, ""));
    sel.disabled = !list.length;
    if (current && list.some((d) => d.deviceId === current)) sel.value = current;
  }
}

async function switchDevice(kind) {
  const slot = kind === "audio" ? "mic" : "camera";
  const sel = kind === "audio" ? $("mic-select") : $("camera-select");
  localStorage.setItem(`parley.device.${kind}`, sel.value);
  stopTrack(slot);
  try {
    local[slot] = await getTrack(kind);
  } catch (err) {
    local.noMedia = mediaErrorText(err, kind === "audio" ? "microphone" : "camera");
  }
  renderLocal();
}

function renderLocal() {
  const cam = local.camera && !local.cameraOff ? local.camera : null;
  const pv = $("preview-video");
  if (cam) {
    if (pv.srcObject?.getVideoTracks()[0] !== cam) pv.srcObject = new MediaStream([cam]);
  } else {
    pv.srcObject = null;
  }
  $("preview-empty").hidden = !!cam;
  $("preview-empty-text").textContent = local.camera ? "Camera is off" : "No camera";
  const msg = $("media-message");
  msg.hidden = !local.noMedia;
  msg.textContent = local.noMedia;

  const sv = $("self-video");
  if (cam) {
    if (sv.srcObject?.getVideoTracks()[0] !== cam) sv.srcObject = new MediaStream([cam]);
  } else {
    sv.srcObject = null;
  }
  $("self-tile").dataset.video = cam ? "on" : "off";
  $("self-initials").textContent = initials(name || "You");
  $("self-muted").hidden = !(local.micMuted || !local.mic);

  setLabel($("mute-button"), local.micMuted ? "Unmute" : "Mute");
  $("mute-button").disabled = !local.mic;
  $("mute-button").classList.toggle("off", local.micMuted);
  setLabel($("camera-button"), local.cameraOff ? "Camera on" : "Camera off");
  $("camera-button").disabled = !local.camera && !local.cameraOff;
  $("camera-button").classList.toggle("off", local.cameraOff);
  setLabel($("share-button"), local.screen ? "Stop sharing" : "Share screen");
  $("share-button").classList.toggle("active", !!local.screen);
  $("share-button").disabled = !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
  startMeter();
}

function setLabel(button, text) {
  button.querySelector(".btn-label").textContent = text;
}

// mic level meter in the lobby (also tells the user the mic works)
let meter = null;
function startMeter() {
  const track = local.mic;
  if (!track || $("lobby").hidden) return stopMeter();
  if (meter && meter.track === track) return;
  stopMeter();
  try {
    const ctx = new AudioContext();
    const src = ctx.createMediaStreamSource(new MediaStream([track]));
    const an = ctx.createAnalyser();
    an.fftSize = 512;
    src.connect(an);
    const buf = new Float32Array(an.fftSize);
    const tick = () => {
      if (!meter || meter.ctx !== ctx) return;
      an.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const v of buf) sum += v * v;
      const level = Math.min(1, Math.sqrt(sum / buf.length) * 4);
      $("mic-meter").style.width = `${Math.round(level * 100)}%`;
      meter.raf = requestAnimationFrame(tick);
    };
    meter = { track, ctx, raf: requestAnimationFrame(tick) };
  } catch {
    meter = null;
  }
}

function stopMeter() {
  if (!meter) return;
  cancelAnimationFrame(meter.raf);
  meter.ctx.close().catch(() => {});
  meter = null;
}

// ---------------------------------------------------------------- signaling

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/ws`;
}

function send(attempt, msg) {
  if (attempt.ws && attempt.ws.readyState === WebSocket.OPEN) attempt.ws.send(JSON.stringify(msg));
}

function connect() {
  clearTimeout(retryTimer);
  const attempt = {
    id: ++attemptSeq,
    closed: false,
    welcomed: false,
    ws: null,
    publish: null,
    subscribe: null,
    stream: new MediaStream(), // msid for our published tracks
    senders: {}, // source -> RTCRtpTransceiver on the publish pc
    tracks: new Map(), // mid -> {mid, participant_id, kind, source} on the subscribe pc
    publishChain: Promise.resolve(),
    subscribeChain: Promise.resolve(),
    answerWaiter: null,
    pcTimers: {},
  };
  call = attempt;
  if (state !== "reconnecting") setState("connecting");
  const ws = new WebSocket(wsUrl());
  attempt.ws = ws;
  ws.onopen = () => send(attempt, { type: "join", token, name });
  ws.onmessage = (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    onMessage(attempt, msg);
  };
  ws.onclose = (ev) => {
    if (attempt.closed || call !== attempt) return;
    if (ev.code === CLOSE_REPLACED) {
      return finish("left", "You joined from another tab or device", "This window was disconnected because the same link was opened elsewhere.", true);
    }
    if (ev.code === CLOSE_SESSION_ENDED) return finish("ended", "The session has ended", endedText(""));
    lostConnection(attempt, `signaling closed (${ev.code})`);
  };
  attempt.welcomeTimer = setTimeout(() => {
    if (!attempt.welcomed) lostConnection(attempt, "no welcome from the server");
  }, WELCOME_TIMEOUT_MS);
}

function teardown(attempt) {
  if (!attempt || attempt.closed) return;
  attempt.closed = true;
  clearTimeout(attempt.welcomeTimer);
  for (const t of Object.values(attempt.pcTimers)) clearTimeout(t);
  if (attempt.answerWaiter) attempt.answerWaiter.reject(new Error("connection closed"));
  for (const pc of [attempt.publish, attempt.subscribe]) {
    if (pc) pc.close();
  }
  if (attempt.ws && attempt.ws.readyState <= WebSocket.OPEN) attempt.ws.close(1000);
}

function lostConnection(attempt, why) {
  if (attempt !== call || attempt.closed) return;
  console.warn("parley: connection lost:", why);
  teardown(attempt);
  clearRemote();
  const delay = RETRY_DELAYS_MS[Math.min(retries, RETRY_DELAYS_MS.length - 1)];
  retries += 1;
  setState("reconnecting", retries > 2 ? `Reconnecting… (attempt ${retries})` : "Reconnecting…");
  banner("Connection lost. Reconnecting…");
  retryTimer = setTimeout(connect, delay);
}

function onMessage(attempt, msg) {
  if (attempt !== call || attempt.closed) return;
  switch (msg.type) {
    case "welcome":
      return onWelcome(attempt, msg);
    case "answer":
      if (msg.pc === "publish" && attempt.answerWaiter) attempt.answerWaiter.resolve(msg);
      return;
    case "offer":
      if (msg.pc === "subscribe") {
        attempt.subscribeChain = attempt.subscribeChain
          .then(() => onSubscribeOffer(attempt, msg))
          .catch((err) => {
            if (!attempt.closed) lostConnection(attempt, `subscribe negotiation: ${err}`);
          });
      }
      return;
    case "participant_joined":
      if (msg.participant && msg.participant.participant_id !== attempt.participantId) {
        roster.set(msg.participant.participant_id, msg.participant);
        renderRoster();
      }
      return;
    case "participant_left":
      roster.delete(msg.participant_id);
      renderRoster();
      return;
    case "recording":
      return showRecording(msg.state);
    case "session_ended":
      return finish("ended", "The session has ended", endedText(msg.reason));
    case "error":
      return onError(attempt, msg);
    default:
      return;
  }
}

function endedText(reason) {
  const known = {
    ended_by_agent: "The agent ended the session.",
    ended: "The session was ended.",
    deleted: "The session was ended.",
    expired: "The session has expired.",
  };
  return known[reason] || (reason ? `Reason: ${String(reason).replace(/_/g, " ")}.` : "Thank you for joining.");
}

function onError(attempt, msg) {
  const text = msg.message || msg.code || "error";
  if (!attempt.welcomed) {
    // the server refused the join: retrying with the same token will not help
    const ended = msg.code === "session_ended" || msg.code === "session_not_found";
    return finish(ended ? "ended" : "failed", ended ? "The session has ended" : "Could not join the call", text);
  }
  if (attempt.answerWaiter) attempt.answerWaiter.reject(new Error(text));
  banner(`Server error: ${text}`);
  setTimeout(() => {
    if ($("banner-text").textContent === `Server error: ${text}`) banner("");
  }, 6000);
}

function onWelcome(attempt, msg) {
  attempt.welcomed = true;
  clearTimeout(attempt.welcomeTimer);
  attempt.participantId = msg.participant_id;
  attempt.role = msg.role;
  joinHistory.participantId = msg.participant_id;
  joinHistory.role = msg.role;
  if (msg.name) name = msg.name;
  retries = 0;
  sessionStorage.setItem(joinedKey, name);
  roster.clear();
  for (const p of msg.participants || []) {
    if (p.participant_id !== msg.participant_id && !p.left_at) roster.set(p.participant_id, p);
  }
  const config = {
    iceServers: msg.ice_servers || [],
    iceTransportPolicy: msg.ice_transport_policy || "all",
    bundlePolicy: "max-bundle",
  };
  attempt.publish = new RTCPeerConnection(config);
  attempt.subscribe = new RTCPeerConnection(config);
  for (const [label, pc] of [["publish", attempt.publish], ["subscribe", attempt.subscribe]]) {
    pc.onconnectionstatechange = () => watchPc(attempt, label, pc);
  }
  attempt.subscribe.ontrack = () => reconcileRemote(attempt);

  if (local.mic) addSender(attempt, "microphone", local.micMuted ? null : local.mic, "audio");
  if (local.camera || local.cameraOff) addSender(attempt, "camera", local.cameraOff ? null : local.camera, "video");
  if (local.screen) addSender(attempt, "screen", local.screen, "video");
  if (Object.keys(attempt.senders).length) renegotiate(attempt);

  $("end-button").hidden = msg.role !== "agent";
  showRecording(msg.recording, msg.role);
  document.body.dataset.role = msg.role || "";
  setState("connected");
  banner("");
  show("call");
  renderRoster();
  renderLocal();
  startStats();
}

function watchPc(attempt, label, pc) {
  if (attempt.closed) return;
  const s = pc.connectionState;
  clearTimeout(attempt.pcTimers[label]);
  if (s === "failed") {
    lostConnection(attempt, `${label} peer connection failed`);
  } else if (s === "disconnected") {
    attempt.pcTimers[label] = setTimeout(() => {
      if (["disconnected", "failed"].includes(pc.connectionState)) {
        lostConnection(attempt, `${label} peer connection disconnected`);
      }
    }, PC_DISCONNECTED_GRACE_MS);
  }
}

function waitForGathering(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, ms);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// ---------------------------------------------------------------- publishing

function addSender(attempt, source, track, kind) {
  const t = attempt.publish.addTransceiver(track || kind, {
    direction: "sendonly",
    streams: [attempt.stream],
  });
  attempt.senders[source] = t;
  return t;
}

function renegotiate(attempt) {
  const run = () => publishOnce(attempt);
  attempt.publishChain = attempt.publishChain.then(run, run).catch((err) => {
    if (attempt.closed) return;
    console.warn("parley: publish negotiation failed:", err);
    if (/timed out/.test(String(err))) lostConnection(attempt, `publish: ${err}`);
    else banner(`Could not update what you send: ${err.message || err}`);
  });
  return attempt.publishChain;
}

async function publishOnce(attempt) {
  if (attempt.closed) return;
  const pc = attempt.publish;
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await waitForGathering(pc, GATHER_TIMEOUT_MS);
  if (attempt.closed) return;
  const sources = {};
  for (const [source, t] of Object.entries(attempt.senders)) {
    if (t.mid !== null && t.direction !== "inactive" && !t.stopped) sources[t.mid] = source;
  }
  const answer = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("publish answer timed out")), ANSWER_TIMEOUT_MS);
    attempt.answerWaiter = {
      resolve: (m) => (clearTimeout(timer), resolve(m)),
      reject: (e) => (clearTimeout(timer), reject(e)),
    };
  });
  send(attempt, { type: "offer", pc: "publish", sdp: pc.localDescription.sdp, sources });
  try {
    const msg = await answer;
    if (attempt.closed) return;
    await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
  } finally {
    attempt.answerWaiter = null;
  }
}

async function toggleMute() {
  if (!local.mic) return;
  local.micMuted = !local.micMuted;
  local.mic.enabled = !local.micMuted;
  // replaceTrack(null) stops RTP altogether, which the other side reads as "muted"
  const t = call && call.senders.microphone;
  if (t && !call.closed) await t.sender.replaceTrack(local.micMuted ? null : local.mic);
  renderLocal();
}

async function toggleCamera() {
  const t = call && !call.closed ? call.senders.camera : null;
  if (!local.cameraOff) {
    local.cameraOff = true;
    if (t) await t.sender.replaceTrack(null);
    stopTrack("camera"); // turn the camera light off too
    renderLocal();
    return;
  }
  try {
    local.camera = await getTrack("video");
  } catch (err) {
    banner(mediaErrorText(err, "camera"));
    return;
  }
  local.cameraOff = false;
  if (call && !call.closed && call.publish) {
    if (t) await t.sender.replaceTrack(local.camera);
    else {
      addSender(call, "camera", local.camera, "video");
      renegotiate(call);
    }
  }
  renderLocal();
}

async function toggleShare() {
  if (local.screen) return stopShare();
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
  } catch (err) {
    if (err.name !== "NotAllowedError") banner(`Could not share your screen: ${err.message || err.name}`);
    return;
  }
  const track = stream.getVideoTracks()[0];
  if ("contentHint" in track) track.contentHint = "detail";
  track.addEventListener("ended", () => {
    if (local.screen === track) stopShare();
  });
  local.screen = track;
  if (call && !call.closed && call.publish) {
    const t = call.senders.screen;
    if (t && !t.stopped) {
      // reuse the m-line from an earlier share
      t.direction = "sendonly";
      await t.sender.replaceTrack(track);
    } else {
      addSender(call, "screen", track, "video");
    }
    renegotiate(call);
  }
  renderLocal();
}

async function stopShare() {
  const track = local.screen;
  local.screen = null;
  if (track) track.stop();
  const t = call && !call.closed ? call.senders.screen : null;
  if (t) {
    await t.sender.replaceTrack(null);
    t.direction = "inactive";
    renegotiate(call);
  }
  renderLocal();
}

// ---------------------------------------------------------------- subscribing

async function onSubscribeOffer(attempt, msg) {
  if (attempt.closed) return;
  const pc = attempt.subscribe;
  attempt.tracks = new Map((msg.tracks || []).map((t) => [t.mid, t]));
  await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  await waitForGathering(pc, GATHER_TIMEOUT_MS);
  if (attempt.closed) return;
  send(attempt, { type: "answer", pc: "subscribe", sdp: pc.localDescription.sdp });
  reconcileRemote(attempt);
}

// participant_id -> {tile, video, camera, mic, lastPackets, ...}
const remoteViews = new Map();
// mid -> {tile, video} for screens
const screenViews = new Map();
// mid -> <audio>
const audioViews = new Map();

function initials(text) {
  const words = String(text || "?").trim().split(/\s+/).filter(Boolean);
  return (words.length > 1 ? words[0][0] + words[words.length - 1][0] : (words[0] || "?").slice(0, 2)).toUpperCase();
}

function roleLabel(role) {
  return { agent: "Agent", customer: "Customer", supervisor: "Supervisor" }[role] || role || "";
}

function ensureTile(pid) {
  let view = remoteViews.get(pid);
  if (view) return view;
  const tile = document.createElement("div");
  tile.className = "tile remote";
  tile.dataset.participantId = pid;
  tile.dataset.video = "off";
  tile.dataset.muted = "true";
  tile.dataset.speaking = "false";
  tile.innerHTML = `
    <video data-source="camera" autoplay playsinline muted></video>
    <div class="avatar" aria-hidden="true"><span class="initials"></span></div>
    <div class="label"><span class="name"></span><span class="role-badge"></span>
      <span class="mic-off" title="Muted"><svg viewBox="0 0 24 24" aria-hidden="true"><path d="M3 3l18 18M9 9v2a3 3 0 0 0 5.1 2.1M15 10V5a3 3 0 0 0-5.9-.8M19 11a7 7 0 0 1-1.2 3.9M5 11a7 7 0 0 0 11.3 5.5M12 18v3"/></svg></span>
    </div>`;
  $("tiles").append(tile);
  view = { tile, video: tile.querySelector("video"), camera: null, mic: null, audio: {}, video_: {} };
  remoteViews.set(pid, view);
  return view;
}

function renderRoster() {
  for (const [pid, p] of roster) {
    const view = ensureTile(pid);
    view.tile.dataset.role = p.role || "";
    view.tile.querySelector(".name").textContent = p.name || roleLabel(p.role) || "Guest";
    view.tile.querySelector(".role-badge").textContent = roleLabel(p.role);
    view.tile.querySelector(".initials").textContent = initials(p.name || p.role);
    view.tile.setAttribute("aria-label", `${p.name || "Guest"} (${roleLabel(p.role)})`);
  }
  for (const [pid, view] of remoteViews) {
    const hasTracks = call && [...call.tracks.values()].some((t) => t.participant_id === pid);
    if (!roster.has(pid) && !hasTracks) {
      view.tile.remove();
      remoteViews.delete(pid);
    }
  }
  layout();
}

function reconcileRemote(attempt) {
  if (attempt !== call || attempt.closed || !attempt.subscribe) return;
  const live = new Map(); // mid -> {info, track}
  for (const tr of attempt.subscribe.getTransceivers()) {
    const info = tr.mid !== null ? attempt.tracks.get(tr.mid) : null;
    if (!info || tr.stopped || !tr.receiver.track) continue;
    live.set(tr.mid, { info, track: tr.receiver.track });
  }
  const cameraOf = new Map();
  for (const [mid, { info, track }] of live) {
    if (info.participant_id === attempt.participantId) continue; // never our own echo
    if (info.source === "screen") {
      let sv = screenViews.get(mid);
      if (!sv) {
        const tile = document.createElement("div");
        tile.className = "tile screen";
        tile.dataset.participantId = info.participant_id;
        tile.dataset.mid = mid;
        tile.innerHTML = `<video data-source="screen" autoplay playsinline muted></video>
          <div class="label"><span class="name"></span></div>`;
        $("screens").append(tile);
        sv = { tile, video: tile.querySelector("video") };
        screenViews.set(mid, sv);
      }
      const who = roster.get(info.participant_id);
      sv.tile.querySelector(".name").textContent = `${who ? who.name || roleLabel(who.role) : "Someone"}'s screen`;
      attach(sv.video, track);
    } else if (track.kind === "audio") {
      let el = audioViews.get(mid);
      if (!el) {
        el = document.createElement("audio");
        el.autoplay = true;
        el.dataset.mid = mid;
        $("audio-sink").append(el);
        audioViews.set(mid, el);
      }
      el.dataset.participantId = info.participant_id;
      attach(el, track);
      ensureTile(info.participant_id).micMid = mid;
    } else {
      cameraOf.set(info.participant_id, { mid, track });
    }
  }
  for (const [pid, { mid, track }] of cameraOf) {
    const view = ensureTile(pid);
    view.cameraMid = mid;
    attach(view.video, track);
  }
  for (const [pid, view] of remoteViews) {
    if (!cameraOf.has(pid)) {
      view.cameraMid = null;
      view.video.srcObject = null;
      view.tile.dataset.video = "off";
    }
    if (view.micMid && !live.has(view.micMid)) {
      view.micMid = null;
      view.tile.dataset.muted = "true";
      view.tile.dataset.speaking = "false";
    }
  }
  for (const [mid, sv] of screenViews) {
    if (!live.has(mid)) {
      sv.video.srcObject = null;
      sv.tile.remove();
      screenViews.delete(mid);
    }
  }
  for (const [mid, el] of audioViews) {
    if (!live.has(mid)) {
      el.srcObject = null;
      el.remove();
      audioViews.delete(mid);
    }
  }
  renderRoster();
}

function attach(el, track) {
  if (el.srcObject && el.srcObject.getTracks()[0] === track) return;
  el.srcObject = new MediaStream([track]);
  const p = el.play();
  if (p && el.tagName === "AUDIO") {
    p.catch(() =>
      banner("Your browser blocked sound until you interact with the page.", {
        label: "Turn on sound",
        run: () => {
          for (const a of audioViews.values()) a.play().catch(() => {});
          banner("");
        },
      }),
    );
  } else if (p) {
    p.catch(() => {});
  }
}

function clearRemote() {
  for (const view of remoteViews.values()) view.tile.remove();
  for (const sv of screenViews.values()) sv.tile.remove();
  for (const el of audioViews.values()) el.remove();
  remoteViews.clear();
  screenViews.clear();
  audioViews.clear();
  roster.clear();
  layout();
}

function layout() {
  const n = remoteViews.size;
  $("tiles").dataset.count = String(n);
  $("stage").classList.toggle("has-screen", screenViews.size > 0);
  $("stage").classList.toggle("alone", n === 0 && screenViews.size === 0);
  $("waiting").hidden = !(n === 0 && screenViews.size === 0);
}

// Speaking, muted and camera-off come from the browser's own receive statistics:
// a muted sender sends no RTP at all (replaceTrack(null)), a turned-off camera no frames.
function startStats() {
  clearInterval(statsTimer);
  statsTimer = setInterval(pollStats, STATS_INTERVAL_MS);
}

async function pollStats() {
  const attempt = call;
  if (!attempt || attempt.closed || !attempt.subscribe) return;
  const now = performance.now();
  let report;
  try {
    report = await attempt.subscribe.getStats();
  } catch {
    return;
  }
  const byMid = new Map();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.mid !== undefined) byMid.set(s.mid, s);
  });
  for (const view of remoteViews.values()) {
    const a = view.micMid ? byMid.get(view.micMid) : null;
    if (a) {
      if (a.packetsReceived !== view.lastPackets) {
        view.lastPackets = a.packetsReceived;
        view.lastPacketAt = now;
      }
      const muted = !view.lastPacketAt || now - view.lastPacketAt > SILENT_AFTER_MS;
      view.tile.dataset.muted = String(muted);
      view.tile.dataset.speaking = String(!muted && (a.audioLevel || 0) > SPEAKING_LEVEL);
    }
    const v = view.cameraMid ? byMid.get(view.cameraMid) : null;
    if (v) {
      if (v.framesDecoded !== view.lastFrames) {
        view.lastFrames = v.framesDecoded;
        view.lastFrameAt = now;
      }
      const on = !!view.lastFrameAt && now - view.lastFrameAt < FROZEN_AFTER_MS;
      view.tile.dataset.video = on ? "on" : "off";
    }
  }
  if (attempt.publish && local.mic && !local.micMuted) {
    try {
      const out = await attempt.publish.getStats();
      let level = 0;
      out.forEach((s) => {
        if (s.type === "media-source" && s.kind === "audio") level = s.audioLevel || 0;
      });
      $("self-tile").dataset.speaking = String(level > SPEAKING_LEVEL);
    } catch {
      /* closed meanwhile */
    }
  } else {
    $("self-tile").dataset.speaking = "false";
  }
}

// ---------------------------------------------------------------- join / leave / end

async function join() {
  name = $("name-input").value.trim();
  if (!name) {
    $("name-input").focus();
    return;
  }
  localStorage.setItem("parley.name", name);
  retries = 0;
  setState("connecting");
  show("call");
  layout();
  await mediaReady.catch(() => {}); // Join pressed before the camera started: publish it all the same
  if (state !== "connecting") return;
  stopMeter();
  renderLocal();
  connect();
}

function finish(next, title, detail, canRejoin = false) {
  clearTimeout(retryTimer);
  clearInterval(statsTimer);
  teardown(call);
  clearRemote();
  releaseMedia();
  hideRecording();
  local.micMuted = false;
  local.cameraOff = false;
  sessionStorage.removeItem(joinedKey);
  banner("");
  setState(next);
  $("after-title").textContent = title;
  $("after-detail").textContent = detail || "";
  $("rejoin-button").hidden = !canRejoin;
  show("after");
}

function leave() {
  if (call && !call.closed) send(call, { type: "leave" });
  finish("left", "You left the call", "You can rejoin with the same link while the session is open.", true);
}

function endSession() {
  if (!call || call.closed) return;
  if (!confirmEnd()) return;
  send(call, { type: "end" });
  // session_ended follows; if it does not, end locally after a moment
  const attempt = call;
  setTimeout(() => {
    if (call === attempt && !["ended", "left"].includes(state)) {
      finish("ended", "The session has ended", "You ended the session for everyone.");
    }
  }, 3000);
}

function confirmEnd() {
  // a plain confirm() would block tests and phones alike; ask twice on the button instead
  const btn = $("end-button");
  if (btn.dataset.armed === "true" || navigator.webdriver) return true;
  btn.dataset.armed = "true";
  setLabel(btn, "End session");
  banner("Press End session again to end the call for everyone.");
  setTimeout(() => {
    btn.dataset.armed = "false";
    if ($("banner-text").textContent.startsWith("Press End session")) banner("");
  }, 4000);
  return false;
}

async function rejoin() {
  show("lobby");
  setState("idle");
  mediaReady = acquireMedia();
  await mediaReady.catch(() => {});
}

// ---------------------------------------------------------------- wiring

function init() {
  setState("idle");
  const hint = decodeTokenHint();
  const saved = sessionStorage.getItem(joinedKey);
  $("name-input").value = saved || hint.name || localStorage.getItem("parley.name") || "";
  if (hint.role === "agent") $("lobby-hint").textContent = "You are joining as the agent. Check your camera and microphone.";

  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    join();
  });
  $("camera-select").addEventListener("change", () => switchDevice("video"));
  $("mic-select").addEventListener("change", () => switchDevice("audio"));
  $("mute-button").addEventListener("click", toggleMute);
  $("camera-button").addEventListener("click", toggleCamera);
  $("share-button").addEventListener("click", toggleShare);
  $("leave-button").addEventListener("click", leave);
  $("end-button").addEventListener("click", endSession);
  $("rejoin-button").addEventListener("click", rejoin);
  initRecording((msg) => call && send(call, msg));
  if (navigator.mediaDevices && "ondevicechange" in navigator.mediaDevices) {
    navigator.mediaDevices.addEventListener("devicechange", () => listDevices());
  }
  window.addEventListener("pagehide", () => teardown(call));
  window.addEventListener("online", () => {
    if (state === "reconnecting") connect();
  });

  if (!token) {
    finish("failed", "This link is not complete", "Ask for a new invitation link.");
    return;
  }
  mediaReady = acquireMedia();
  mediaReady.then(() => {
    // a reload during a call goes straight back in
    if (saved && state === "idle") join();
  });
}

// Test and debugging hook: the real objects, read-only.
window.parley = {
  get state() {
    return state;
  },
  get participantId() {
    return joinHistory.participantId;
  },
  get role() {
    return joinHistory.role;
  },
  get pcs() {
    return { publish: call ? call.publish : null, subscribe: call ? call.subscribe : null };
  },
  get ws() {
    return call ? call.ws : null;
  },
  get tracks() {
    return call ? [...call.tracks.values()] : [];
  },
  get participants() {
    return [...roster.values()];
  },
  get localTracks() {
    return ["mic", "camera", "screen"].map((s) => local[s]).filter(Boolean);
  },
  /** Simulate a network drop: close the socket as if the network did. */
  dropConnection() {
    if (call && call.ws) call.ws.close(CLOSE_TEST_DROP, "test drop");
  },
};

init();
