// parley join page: one participant of a relayed (SFU) video call. This module builds the page
// at start-up and owns the call's lifecycle (join / leave / end / rejoin); the other modules:
//   join-config.js     constants, the token from the URL, texts
//   join-state.js      createState(): everything the page knows; createAttempt(): one connection
//   join-ui.js         status pill, sections, banner, button labels
//   join-media.js      local camera/microphone, devices, preview, self tile, lobby meter
//   join-signaling.js  the WebSocket, the welcome, reconnects, the two peer connections
//   join-publish.js    the publish connection: senders, renegotiation, mute/camera/share
//   join-remote.js     the subscribe connection: remote tiles, screens, audio, receive stats
//   recording.js       the recording badge (everyone) and Start/Stop recording (agents)
// Each part is an object made by create*(app) and reaches the others through `app` (see
// docs/browser.md, "Page structure"). No module keeps mutable state at module level.
//
// Two RTCPeerConnections per connection attempt, both to the relay only:
//   publish   page -> relay, the page offers (trickle ICE: candidates follow the offer)
//   subscribe relay -> page, the relay offers; `tracks` maps each mid to whose track it is
// Reconnect = a new attempt (new WebSocket, new peer connections) with the same token.
// The protocol is described in docs/browser.md.

import { CLOSE_TEST_DROP, decodeTokenHint, tokenFromLocation } from "./join-config.js";
import { createLocalMedia } from "./join-media.js";
import { createPublisher } from "./join-publish.js";
import { createRemote } from "./join-remote.js";
import { createSignaling } from "./join-signaling.js";
import { createState } from "./join-state.js";
import { $, createUi, setLabel } from "./join-ui.js";
import { createRecording } from "./recording.js";

/** The call's lifecycle: what the page's buttons do. */
function createController(app) {
  const st = app.state;
  const controller = {
    async join() {
      st.name = $("name-input").value.trim();
      if (!st.name) {
        $("name-input").focus();
        return;
      }
      localStorage.setItem("parley.name", st.name);
      st.retries = 0;
      app.ui.setState("connecting");
      app.ui.show("call");
      app.remote.layout();
      await st.mediaReady.catch(() => {}); // Join pressed before the camera started: publish it all the same
      if (st.phase !== "connecting") return;
      app.media.stopMeter();
      app.media.render();
      app.signaling.connect();
    },

    /** The end of the call on this page: left, ended, failed (or replaced elsewhere). */
    finish(next, title, detail, canRejoin = false) {
      clearTimeout(st.retryTimer);
      app.signaling.teardown(st.call);
      app.remote.clear();
      app.media.release();
      app.recording.hide();
      st.local.micMuted = false;
      st.local.cameraOff = false;
      sessionStorage.removeItem(st.joinedKey);
      app.ui.banner("");
      app.ui.setState(next);
      $("after-title").textContent = title;
      $("after-detail").textContent = detail || "";
      $("rejoin-button").hidden = !canRejoin;
      app.ui.show("after");
    },

    leave() {
      if (st.call && !st.call.closed) app.signaling.send(st.call, { type: "leave" });
      controller.finish("left", "You left the call", "You can rejoin with the same link while the session is open.", true);
    },

    endSession() {
      if (!st.call || st.call.closed) return;
      if (!controller.confirmEnd()) return;
      app.signaling.send(st.call, { type: "end" });
      // session_ended follows; if it does not, end locally after a moment
      const attempt = st.call;
      setTimeout(() => {
        if (st.call === attempt && !["ended", "left"].includes(st.phase)) {
          controller.finish("ended", "The session has ended", "You ended the session for everyone.");
        }
      }, 3000);
    },

    confirmEnd() {
      // a plain confirm() would block tests and phones alike; ask twice on the button instead
      const btn = $("end-button");
      if (btn.dataset.armed === "true" || navigator.webdriver) return true;
      btn.dataset.armed = "true";
      setLabel(btn, "End session");
      app.ui.banner("Press End session again to end the call for everyone.");
      setTimeout(() => {
        btn.dataset.armed = "false";
        if ($("banner-text").textContent.startsWith("Press End session")) app.ui.banner("");
      }, 4000);
      return false;
    },

    async rejoin() {
      app.ui.show("lobby");
      app.ui.setState("idle");
      st.mediaReady = app.media.acquire();
      await st.mediaReady.catch(() => {});
    },

    /** Wire the page's controls, then start the lobby (or rejoin after a reload). */
    init() {
      app.ui.setState("idle");
      const hint = decodeTokenHint(st.token);
      const saved = sessionStorage.getItem(st.joinedKey);
      $("name-input").value = saved || hint.name || localStorage.getItem("parley.name") || "";
      if (hint.role === "agent") $("lobby-hint").textContent = "You are joining as the agent. Check your camera and microphone.";

      $("join-form").addEventListener("submit", (ev) => {
        ev.preventDefault();
        controller.join();
      });
      $("camera-select").addEventListener("change", () => app.media.switchDevice("video"));
      $("mic-select").addEventListener("change", () => app.media.switchDevice("audio"));
      $("mute-button").addEventListener("click", app.publisher.toggleMute);
      $("camera-button").addEventListener("click", app.publisher.toggleCamera);
      $("share-button").addEventListener("click", app.publisher.toggleShare);
      $("leave-button").addEventListener("click", controller.leave);
      $("end-button").addEventListener("click", controller.endSession);
      $("rejoin-button").addEventListener("click", controller.rejoin);
      app.recording.init();
      if (navigator.mediaDevices && "ondevicechange" in navigator.mediaDevices) {
        navigator.mediaDevices.addEventListener("devicechange", () => app.media.listDevices());
      }
      window.addEventListener("pagehide", () => app.signaling.teardown(st.call));
      window.addEventListener("online", () => {
        if (st.phase === "reconnecting") app.signaling.connect();
      });

      if (!st.token) {
        controller.finish("failed", "This link is not complete", "Ask for a new invitation link.");
        return;
      }
      st.mediaReady = app.media.acquire();
      st.mediaReady.then(() => {
        // a reload during a call goes straight back in
        if (saved && st.phase === "idle") controller.join();
      });
    },
  };
  return controller;
}

/** The page: one state object and one object per part, each reaching the others through it. */
export function createApp(token) {
  const app = { state: createState(token) };
  app.ui = createUi(app);
  app.media = createLocalMedia(app);
  app.signaling = createSignaling(app);
  app.publisher = createPublisher(app);
  app.remote = createRemote(app);
  app.recording = createRecording(app);
  app.controller = createController(app);
  return app;
}

/** Test and debugging hook: the real objects, read-only. */
function debugHook(app) {
  const st = app.state;
  return {
    get state() {
      return st.phase;
    },
    get participantId() {
      return st.joined.participantId;
    },
    get role() {
      return st.joined.role;
    },
    get pcs() {
      return { publish: st.call ? st.call.publish : null, subscribe: st.call ? st.call.subscribe : null };
    },
    get ws() {
      return st.call ? st.call.ws : null;
    },
    get tracks() {
      return st.call ? [...st.call.tracks.values()] : [];
    },
    get participants() {
      return [...st.roster.values()];
    },
    /** The server's participant_state of everyone: {participant_id: {camera, microphone, screen}}. */
    get states() {
      return Object.fromEntries(st.states);
    },
    /** The server's speaking list and connection qualities. */
    get speaking() {
      return [...st.speaking];
    },
    get quality() {
      return Object.fromEntries(st.quality);
    },
    get localTracks() {
      return ["mic", "camera", "screen"].map((s) => st.local[s]).filter(Boolean);
    },
    /** How many connection attempts this page has made (the first join is 1). */
    get attempts() {
      return st.attemptSeq;
    },
    /** Simulate a network drop: close the socket as if the network did. */
    dropConnection() {
      if (st.call && st.call.ws) st.call.ws.close(CLOSE_TEST_DROP, "test drop");
    },
  };
}

const app = createApp(tokenFromLocation(location));
window.parley = debugHook(app);
app.controller.init();
