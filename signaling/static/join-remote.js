// parley join page: subscribing. The relay offers on the subscribe connection; `tracks` maps
// each mid to whose track it is. Remote participants get a tile (camera, name, mic state), a
// screen share its own tile, each audio track an <audio>. Speaking, muted and camera-off come
// from the browser's own receive statistics: a muted sender sends no RTP at all
// (replaceTrack(null)), a turned-off camera no frames.

import { FROZEN_AFTER_MS, GATHER_TIMEOUT_MS, SILENT_AFTER_MS, SPEAKING_LEVEL, STATS_INTERVAL_MS } from "./join-config.js";
import { waitForGathering } from "./join-signaling.js";
import { $, initials, roleLabel } from "./join-ui.js";

export function createRemote(app) {
  const st = app.state;
  const remote = {
    views: new Map(), // participant_id -> {tile, video, cameraMid, micMid, lastPackets, ...}
    screens: new Map(), // mid -> {tile, video} for screens
    audio: new Map(), // mid -> <audio>

    async onSubscribeOffer(attempt, msg) {
      if (attempt.closed) return;
      const pc = attempt.subscribe;
      attempt.tracks = new Map((msg.tracks || []).map((t) => [t.mid, t]));
      await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      await waitForGathering(pc, GATHER_TIMEOUT_MS);
      if (attempt.closed) return;
      app.signaling.send(attempt, { type: "answer", pc: "subscribe", sdp: pc.localDescription.sdp });
      remote.reconcile(attempt);
    },

    ensureTile(pid) {
      let view = remote.views.get(pid);
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
      remote.views.set(pid, view);
      return view;
    },

    renderRoster() {
      for (const [pid, p] of st.roster) {
        const view = remote.ensureTile(pid);
        view.tile.dataset.role = p.role || "";
        view.tile.querySelector(".name").textContent = p.name || roleLabel(p.role) || "Guest";
        view.tile.querySelector(".role-badge").textContent = roleLabel(p.role);
        view.tile.querySelector(".initials").textContent = initials(p.name || p.role);
        view.tile.setAttribute("aria-label", `${p.name || "Guest"} (${roleLabel(p.role)})`);
      }
      for (const [pid, view] of remote.views) {
        const hasTracks = st.call && [...st.call.tracks.values()].some((t) => t.participant_id === pid);
        if (!st.roster.has(pid) && !hasTracks) {
          view.tile.remove();
          remote.views.delete(pid);
        }
      }
      remote.layout();
    },

    /** Make the tiles, screens and <audio> elements match the subscribe connection's tracks. */
    reconcile(attempt) {
      if (attempt !== st.call || attempt.closed || !attempt.subscribe) return;
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
          let sv = remote.screens.get(mid);
          if (!sv) {
            const tile = document.createElement("div");
            tile.className = "tile screen";
            tile.dataset.participantId = info.participant_id;
            tile.dataset.mid = mid;
            tile.innerHTML = `<video data-source="screen" autoplay playsinline muted></video>
          <div class="label"><span class="name"></span></div>`;
            $("screens").append(tile);
            sv = { tile, video: tile.querySelector("video") };
            remote.screens.set(mid, sv);
          }
          const who = st.roster.get(info.participant_id);
          sv.tile.querySelector(".name").textContent = `${who ? who.name || roleLabel(who.role) : "Someone"}'s screen`;
          remote.attach(sv.video, track);
        } else if (track.kind === "audio") {
          let el = remote.audio.get(mid);
          if (!el) {
            el = document.createElement("audio");
            el.autoplay = true;
            el.dataset.mid = mid;
            $("audio-sink").append(el);
            remote.audio.set(mid, el);
          }
          el.dataset.participantId = info.participant_id;
          remote.attach(el, track);
          remote.ensureTile(info.participant_id).micMid = mid;
        } else {
          cameraOf.set(info.participant_id, { mid, track });
        }
      }
      for (const [pid, { mid, track }] of cameraOf) {
        const view = remote.ensureTile(pid);
        view.cameraMid = mid;
        remote.attach(view.video, track);
      }
      for (const [pid, view] of remote.views) {
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
      for (const [mid, sv] of remote.screens) {
        if (!live.has(mid)) {
          sv.video.srcObject = null;
          sv.tile.remove();
          remote.screens.delete(mid);
        }
      }
      for (const [mid, el] of remote.audio) {
        if (!live.has(mid)) {
          el.srcObject = null;
          el.remove();
          remote.audio.delete(mid);
        }
      }
      remote.renderRoster();
    },

    attach(el, track) {
      if (el.srcObject && el.srcObject.getTracks()[0] === track) return;
      el.srcObject = new MediaStream([track]);
      const p = el.play();
      if (p && el.tagName === "AUDIO") {
        p.catch(() =>
          app.ui.banner("Your browser blocked sound until you interact with the page.", {
            label: "Turn on sound",
            run: () => {
              for (const a of remote.audio.values()) a.play().catch(() => {});
              app.ui.banner("");
            },
          }),
        );
      } else if (p) {
        p.catch(() => {});
      }
    },

    /** Remove every remote tile and forget the roster (the connection is gone). */
    clear() {
      for (const view of remote.views.values()) view.tile.remove();
      for (const sv of remote.screens.values()) sv.tile.remove();
      for (const el of remote.audio.values()) el.remove();
      remote.views.clear();
      remote.screens.clear();
      remote.audio.clear();
      st.roster.clear();
      remote.layout();
    },

    layout() {
      const n = remote.views.size;
      const screens = remote.screens.size;
      $("tiles").dataset.count = String(n);
      $("stage").classList.toggle("has-screen", screens > 0);
      $("stage").classList.toggle("alone", n === 0 && screens === 0);
      $("waiting").hidden = !(n === 0 && screens === 0);
    },

    startStats() {
      clearInterval(st.statsTimer);
      st.statsTimer = setInterval(remote.pollStats, STATS_INTERVAL_MS);
    },

    stopStats() {
      clearInterval(st.statsTimer);
    },

    async pollStats() {
      const attempt = st.call;
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
      for (const view of remote.views.values()) {
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
      const local = st.local;
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
    },
  };
  return remote;
}
