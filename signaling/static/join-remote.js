// parley join page: subscribing. The relay offers on the subscribe connection; `tracks` maps
// each mid to whose track it is. Remote participants get a tile (camera, name, mic state), a
// screen share its own tile, each audio track an <audio>. Camera off, muted, speaking and
// connection quality come from the server (participant_state, speaking, connection_quality),
// the same for every browser: never guessed from what this browser happens to receive.

import { $, initials, roleLabel } from "./join-ui.js";

/** What the server says of a participant (participant_state, or an entry of the welcome). */
function stateOf(m) {
  return { camera: !!m.camera, microphone: !!m.microphone, screen: !!m.screen, reconnecting: !!m.reconnecting };
}

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
      if (attempt.closed) return;
      app.signaling.send(attempt, { type: "answer", pc: "subscribe", sdp: pc.localDescription.sdp });
      pc.described(); // our candidates follow (trickle ICE)
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
      <span class="quality" hidden><i></i><i></i><i></i></span>
      <span class="reconnecting">Reconnecting…</span>
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
      remote.renderPresence();
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
        if (view.micMid && !live.has(view.micMid)) view.micMid = null;
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
      st.states.clear();
      st.quality.clear();
      st.speaking = [];
      $("self-tile").dataset.speaking = "false";
      remote.showQuality($("self-tile"), undefined);
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

    /** participant_state, speaking and connection_quality: what the server decided. */
    onPresence(attempt, msg) {
      if (msg.type === "participant_state") {
        st.states.set(msg.participant_id, stateOf(msg));
      } else if (msg.type === "speaking") {
        st.speaking = Array.isArray(msg.participant_ids) ? msg.participant_ids : [];
      } else if (msg.type === "connection_quality") {
        st.quality.set(msg.participant_id, msg.quality);
      }
      remote.renderPresence();
    },

    /** A welcome: the others' state comes with it, speaking and quality follow. */
    resetPresence(participants) {
      st.states.clear();
      st.quality.clear();
      st.speaking = [];
      for (const p of participants) {
        st.states.set(p.participant_id, stateOf(p));
      }
    },

    /** Tiles from the server's state: camera off / muted, the speaking ring, the quality
     * indicator, and the active speaker (the first one speaking) first. */
    renderPresence() {
      const active = st.speaking.find((pid) => remote.views.has(pid));
      for (const [pid, view] of remote.views) {
        const state = st.states.get(pid) || {};
        view.tile.dataset.video = state.camera && view.cameraMid ? "on" : "off";
        view.tile.dataset.muted = String(!state.microphone);
        view.tile.dataset.reconnecting = String(!!state.reconnecting);
        view.tile.dataset.speaking = String(!!state.microphone && st.speaking.includes(pid));
        view.tile.dataset.activeSpeaker = String(pid === active);
        remote.showQuality(view.tile, st.quality.get(pid));
      }
      const me = st.joined.participantId;
      $("self-tile").dataset.speaking = String(!!me && !st.local.micMuted && st.speaking.includes(me));
      remote.showQuality($("self-tile"), me ? st.quality.get(me) : undefined);
    },

    showQuality(tile, quality) {
      const el = tile.querySelector(".quality");
      if (!el) return;
      tile.dataset.quality = quality || "";
      el.hidden = !quality;
      const own = tile.id === "self-tile";
      el.title = quality ? `${own ? "Your connection" : "Connection"}: ${quality}` : "";
      el.setAttribute("aria-label", el.title);
    },
  };
  return remote;
}
