// parley join page: signaling. One connection attempt = a WebSocket to /api/v1/ws, the join,
// and after the welcome two RTCPeerConnections to the relay (publish and subscribe). A lost
// connection is retried as a new attempt with the same token. Protocol: docs/browser.md.

import {
  CLOSE_REPLACED,
  CLOSE_SESSION_ENDED,
  PC_DISCONNECTED_GRACE_MS,
  RETRY_DELAYS_MS,
  WELCOME_TIMEOUT_MS,
  endedText,
  wsUrl,
} from "./join-config.js";
import { createAttempt } from "./join-state.js";
import { $ } from "./join-ui.js";

/** Resolves when ICE gathering completes, or after `ms` (the relay is non-trickle). */
export function waitForGathering(pc, ms) {
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

export function createSignaling(app) {
  const st = app.state;
  const signaling = {
    send(attempt, msg) {
      if (attempt.ws && attempt.ws.readyState === WebSocket.OPEN) attempt.ws.send(JSON.stringify(msg));
    },

    /** A new attempt (the first, or a reconnect). */
    connect() {
      clearTimeout(st.retryTimer);
      const attempt = createAttempt(++st.attemptSeq);
      st.call = attempt;
      if (st.phase !== "reconnecting") app.ui.setState("connecting");
      const ws = new WebSocket(wsUrl(location));
      attempt.ws = ws;
      ws.onopen = () => signaling.send(attempt, { type: "join", token: st.token, name: st.name });
      ws.onmessage = (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        signaling.onMessage(attempt, msg);
      };
      ws.onclose = (ev) => {
        if (attempt.closed || st.call !== attempt) return;
        if (ev.code === CLOSE_REPLACED) {
          return app.controller.finish("left", "You joined from another tab or device", "This window was disconnected because the same link was opened elsewhere.", true);
        }
        if (ev.code === CLOSE_SESSION_ENDED) return app.controller.finish("ended", "The session has ended", endedText(""));
        signaling.lostConnection(attempt, `signaling closed (${ev.code})`);
      };
      attempt.welcomeTimer = setTimeout(() => {
        if (!attempt.welcomed) signaling.lostConnection(attempt, "no welcome from the server");
      }, WELCOME_TIMEOUT_MS);
    },

    teardown(attempt) {
      if (!attempt || attempt.closed) return;
      attempt.closed = true;
      clearTimeout(attempt.welcomeTimer);
      for (const t of Object.values(attempt.pcTimers)) clearTimeout(t);
      if (attempt.answerWaiter) attempt.answerWaiter.reject(new Error("connection closed"));
      for (const pc of [attempt.publish, attempt.subscribe]) {
        if (pc) pc.close();
      }
      if (attempt.ws && attempt.ws.readyState <= WebSocket.OPEN) attempt.ws.close(1000);
    },

    lostConnection(attempt, why) {
      if (attempt !== st.call || attempt.closed) return;
      console.warn("parley: connection lost:", why);
      signaling.teardown(attempt);
      app.remote.clear();
      const delay = RETRY_DELAYS_MS[Math.min(st.retries, RETRY_DELAYS_MS.length - 1)];
      st.retries += 1;
      app.ui.setState("reconnecting", st.retries > 2 ? `Reconnecting… (attempt ${st.retries})` : "Reconnecting…");
      app.ui.banner("Connection lost. Reconnecting…");
      st.retryTimer = setTimeout(signaling.connect, delay);
    },

    onMessage(attempt, msg) {
      if (attempt !== st.call || attempt.closed) return;
      switch (msg.type) {
        case "welcome":
          return signaling.onWelcome(attempt, msg);
        case "answer":
          if (msg.pc === "publish" && attempt.answerWaiter) attempt.answerWaiter.resolve(msg);
          return;
        case "offer":
          if (msg.pc === "subscribe") {
            attempt.subscribeChain = attempt.subscribeChain
              .then(() => app.remote.onSubscribeOffer(attempt, msg))
              .catch((err) => {
                if (!attempt.closed) signaling.lostConnection(attempt, `subscribe negotiation: ${err}`);
              });
          }
          return;
        case "participant_joined":
          if (msg.participant && msg.participant.participant_id !== attempt.participantId) {
            st.roster.set(msg.participant.participant_id, msg.participant);
            app.remote.renderRoster();
          }
          return;
        case "participant_left":
          st.roster.delete(msg.participant_id);
          app.remote.renderRoster();
          return;
        case "participant_state":
        case "speaking":
        case "connection_quality":
          return app.remote.onPresence(attempt, msg);
        case "recording":
          return app.recording.show(msg.state);
        case "session_ended":
          return app.controller.finish("ended", "The session has ended", endedText(msg.reason));
        case "error":
          return signaling.onError(attempt, msg);
        default:
          return;
      }
    },

    onError(attempt, msg) {
      const text = msg.message || msg.code || "error";
      if (!attempt.welcomed) {
        // the server refused the join: retrying with the same token will not help
        const ended = msg.code === "session_ended" || msg.code === "session_not_found";
        return app.controller.finish(ended ? "ended" : "failed", ended ? "The session has ended" : "Could not join the call", text);
      }
      if (attempt.answerWaiter) attempt.answerWaiter.reject(new Error(text));
      app.ui.banner(`Server error: ${text}`);
      setTimeout(() => {
        if ($("banner-text").textContent === `Server error: ${text}`) app.ui.banner("");
      }, 6000);
    },

    onWelcome(attempt, msg) {
      attempt.welcomed = true;
      clearTimeout(attempt.welcomeTimer);
      attempt.participantId = msg.participant_id;
      attempt.role = msg.role;
      st.joined.participantId = msg.participant_id;
      st.joined.role = msg.role;
      if (msg.name) st.name = msg.name;
      st.retries = 0;
      sessionStorage.setItem(st.joinedKey, st.name);
      st.roster.clear();
      app.remote.resetPresence(msg.participants || []);
      for (const p of msg.participants || []) {
        if (p.participant_id !== msg.participant_id && !p.left_at) st.roster.set(p.participant_id, p);
      }
      const config = {
        iceServers: msg.ice_servers || [],
        iceTransportPolicy: msg.ice_transport_policy || "all",
        bundlePolicy: "max-bundle",
      };
      attempt.publish = new RTCPeerConnection(config);
      attempt.subscribe = new RTCPeerConnection(config);
      for (const [label, pc] of [["publish", attempt.publish], ["subscribe", attempt.subscribe]]) {
        pc.onconnectionstatechange = () => signaling.watchPc(attempt, label, pc);
      }
      attempt.subscribe.ontrack = () => app.remote.reconcile(attempt);

      const local = st.local;
      const publisher = app.publisher;
      if (local.mic) publisher.addSender(attempt, "microphone", local.micMuted ? null : local.mic, "audio");
      if (local.camera || local.cameraOff) publisher.addSender(attempt, "camera", local.cameraOff ? null : local.camera, "video");
      if (local.screen) publisher.addSender(attempt, "screen", local.screen, "video");
      if (Object.keys(attempt.senders).length) publisher.renegotiate(attempt);
      // the server starts a (re)joined participant with nothing turned off
      if (local.mic && local.micMuted) publisher.trackState("microphone", false);
      if (local.cameraOff) publisher.trackState("camera", false);

      $("end-button").hidden = msg.role !== "agent";
      app.recording.show(msg.recording, msg.role);
      document.body.dataset.role = msg.role || "";
      app.ui.setState("connected");
      app.ui.banner("");
      app.ui.show("call");
      app.remote.renderRoster();
      app.media.render();
    },

    watchPc(attempt, label, pc) {
      if (attempt.closed) return;
      const s = pc.connectionState;
      clearTimeout(attempt.pcTimers[label]);
      if (s === "failed") {
        signaling.lostConnection(attempt, `${label} peer connection failed`);
      } else if (s === "disconnected") {
        attempt.pcTimers[label] = setTimeout(() => {
          if (["disconnected", "failed"].includes(pc.connectionState)) {
            signaling.lostConnection(attempt, `${label} peer connection disconnected`);
          }
        }, PC_DISCONNECTED_GRACE_MS);
      }
    },
  };
  return signaling;
}
