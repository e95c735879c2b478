// parley join page: signaling. One connection attempt = a WebSocket to /api/v1/ws, the join,
// and after the welcome two RTCPeerConnections to the relay (publish and subscribe). A lost
// connection is retried as a new attempt with the same token; a dead media leg alone is rebuilt
// within the attempt (`reconnect`, LiveKit's resume before the full reconnect). Both legs
// trickle the page's ICE candidates (`candidate`) after the offer or answer. Protocol:
// docs/browser.md, docs/design.md.

import {
  CLOSE_MEDIA_FAILED,
  CLOSE_REPLACED,
  CLOSE_SESSION_ENDED,
  HOST_PROBE_MS,
  LEG_REBUILD_TIMEOUT_MS,
  MAX_LEG_REBUILDS,
  MEDIA_CHECK_GAP_MS,
  MEDIA_CHECK_MIN_SENT,
  MEDIA_CHECK_TIMEOUT_MS,
  MEDIA_STALL_MS,
  ONLINE_POLL_MS,
  ONLINE_WAIT_MAX_MS,
  PATH_CHECK_MS,
  PC_DISCONNECTED_GRACE_MS,
  RECONNECT_PROBE_MS,
  RESUME_WINDOW_MS,
  RETRY_DELAYS_MS,
  SOCKET_QUIET_MS,
  STEADY_PPS,
  WELCOME_TIMEOUT_MS,
  endedText,
  forcedIcePolicy,
  wsUrl,
} from "./join-config.js";
import { createAttempt } from "./join-state.js";
import { $ } from "./join-ui.js";

/** Trickle ICE: our candidates go to the relay as they are found (`candidate`), but only
 * after the offer or answer they belong to; until then they wait here. An end of gathering
 * with no candidate at all is not told: right after a network change Chromium's network list
 * may not have the interface yet (a relay-only leg then gathers nothing), it keeps gathering
 * and trickles what it finds later, while the relay, told "no more", would fail the leg at
 * once (and rebuild it, again and again). */
export function trickle(pc, send) {
  const waiting = [];
  let ready = false;
  let found = 0;
  pc.onicecandidate = (ev) => {
    const msg = ev.candidate && ev.candidate.candidate ? ev.candidate.toJSON() : null;
    if (msg) found += 1;
    else if (!found) return;
    if (ready) send(msg);
    else waiting.push(msg);
  };
  /** The offer or answer went out: send what was found so far, and from now on at once. */
  return () => {
    if (ready) return;
    ready = true;
    for (const msg of waiting.splice(0)) send(msg);
  };
}

/** A gathered candidate's address, transport and type; the candidate line itself where the
 * fields are missing (foundation component transport priority address port "typ" type). */
function candidateFields(c) {
  const bits = c.candidate.split(" ");
  return { address: c.address || bits[4] || "", udp: (c.protocol || bits[2] || "").toLowerCase() === "udp", type: c.type || bits[7] };
}

/** What a throwaway connection gathers within `ms` (or until gathering ends): each candidate
 * goes to `found`, which returns true when it has seen enough. Whether it had. */
async function probeGathering(iceServers, ms, found) {
  const pc = new RTCPeerConnection({ iceServers });
  let enough = false;
  try {
    pc.createDataChannel("probe");
    const done = new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      pc.onicecandidate = (ev) => {
        const c = ev.candidate;
        if (c && c.candidate && found(candidateFields(c))) enough = true;
        if (!c || !c.candidate || enough) resolve(clearTimeout(timer));
      };
    });
    await pc.setLocalDescription(await pc.createOffer());
    await done;
  } finally {
    pc.close();
  }
  return enough;
}

/** Whether this browser's WebRTC can still use `address`: a UDP host candidate on it that a
 * throwaway connection gathers within `ms` (a removed address cannot be bound any more; TCP
 * "active" candidates are not bound, so they do not tell). */
export function addressUsable(address, ms) {
  return probeGathering([], ms, (c) => c.udp && c.type === "host" && c.address === address);
}

const LOOPBACK = /^(127\.|::1$|0\.0\.0\.0$)/;

/** The relay's TURN servers over UDP asked as plain STUN servers (a Binding needs no
 * credentials and allocates nothing), for a probe that needs a server-reflexive candidate. */
function stunServers(iceServers) {
  const urls = new Set();
  for (const server of iceServers || []) {
    for (const url of [].concat(server.urls || [])) {
      const turn = /^turn:([^?]+)(?:\?transport=(\w+))?$/i.exec(url);
      if (turn && (!turn[2] || turn[2].toLowerCase() === "udp")) urls.add(`stun:${turn[1]}`);
      else if (/^stuns?:/i.test(url)) urls.add(url);
    }
  }
  return urls.size ? [{ urls: [...urls] }] : [];
}

/** Whether this browser's WebRTC has a network to use (after the "online" event its network
 * list lags the interface by 0.5-2 s): a throwaway connection gathers, within `ms`, a UDP host
 * candidate on a real address (not loopback; an mDNS name stands for a real one), or, where
 * host candidates are hidden (a receive-only page may get none), a server-reflexive one from
 * the relay's STUN/TURN server. */
export function networkReady(iceServers, ms) {
  return probeGathering(stunServers(iceServers), ms, (c) => c.udp && (c.type === "srflx" || (c.type === "host" && !!c.address && !LOOPBACK.test(c.address))));
}

/** The subscribe leg's received packets and the local (base) address of its path, from
 * getStats; null for a path through TURN (its local side is the TURN server's). */
async function pathStats(pc) {
  const report = await pc.getStats();
  let packets = 0;
  let pairId = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp") packets += s.packetsReceived || 0;
    if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  const pair = pairId ? report.get(pairId) : null;
  const local = pair ? report.get(pair.localCandidateId) : null;
  let address = null;
  if (local && local.protocol === "udp" && local.candidateType === "host") address = local.address || local.ip || null;
  else if (local && ["srflx", "prflx"].includes(local.candidateType)) address = local.relatedAddress || null;
  return { packets, address };
}

export function createSignaling(app) {
  const st = app.state;
  const signaling = {
    /** The device's network came back after going away: the old socket may sit in TCP
     * back-off for seconds, so resume on a fresh one now (the relay restarts lost legs). */
    onOnline() {
      const attempt = st.call;
      if (!attempt || attempt.closed || !attempt.welcomed || !attempt.wentOffline) return;
      attempt.wentOffline = false;
      signaling.resume(attempt, "the network came back");
      clearTimeout(attempt.resumeTimer);
      signaling.resumeWhenNetworkReady(attempt);
    },

    /** The browser's WebRTC network list follows the "online" event: legs started before it
     * has the interface gather nothing usable. Look for a usable local address every
     * ONLINE_POLL_MS and resume on a fresh socket as soon as there is one (at the latest
     * after ONLINE_WAIT_MAX_MS). */
    async resumeWhenNetworkReady(attempt) {
      const seq = (attempt.onlineSeq = (attempt.onlineSeq || 0) + 1);
      const started = Date.now();
      let ready = false;
      for (let i = 0; i <= Math.ceil(ONLINE_WAIT_MAX_MS / ONLINE_POLL_MS); i++) {
        const left = ONLINE_WAIT_MAX_MS - (Date.now() - started);
        if (left <= 0) break;
        const looked = Date.now();
        try {
          ready = await networkReady(attempt.pcConfig && attempt.pcConfig.iceServers, Math.min(HOST_PROBE_MS, left));
        } catch (err) {
          console.warn("parley: network probe failed:", err);
        }
        if (ready || attempt.closed || attempt.onlineSeq !== seq || !attempt.resuming) break;
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, ONLINE_POLL_MS - (Date.now() - looked))));
      }
      if (attempt.closed || attempt.onlineSeq !== seq || !attempt.resuming) return;
      console.info(`parley: network ${ready ? "ready" : "not seen ready"} ${Date.now() - started} ms after "online"; resuming`);
      signaling.openSocket(attempt, true);
    },

    send(attempt, msg) {
      if (attempt.ws && attempt.ws.readyState === WebSocket.OPEN) attempt.ws.send(JSON.stringify(msg));
    },

    /** A new attempt (the first, or a reconnect). While an attempt is resuming (the "online"
     * event, say), its socket is retried at once instead. */
    connect() {
      clearTimeout(st.retryTimer);
      if (st.call && !st.call.closed && st.call.resuming) return signaling.openSocket(st.call, true);
      const attempt = createAttempt(++st.attemptSeq);
      st.call = attempt;
      if (st.phase !== "reconnecting") app.ui.setState("connecting");
      signaling.openSocket(attempt, false);
      attempt.welcomeTimer = setTimeout(() => {
        if (!attempt.welcomed) signaling.lostConnection(attempt, "no welcome from the server");
      }, WELCOME_TIMEOUT_MS);
    },

    /** The attempt's WebSocket; `resume`: join again keeping this attempt's peer connections. */
    openSocket(attempt, resume) {
      clearTimeout(attempt.resumeTimer);
      if (attempt.ws && attempt.ws.readyState <= WebSocket.OPEN) {
        attempt.ws.onclose = null;
        attempt.ws.close(1000);
      }
      const ws = new WebSocket(wsUrl(location));
      attempt.ws = ws;
      ws.onopen = () => {
        attempt.heardAt = Date.now();
        signaling.send(attempt, { type: "join", token: st.token, name: st.name, ...(resume ? { resume: true } : {}) });
      };
      ws.onmessage = (ev) => {
        if (attempt.ws === ws) attempt.heardAt = Date.now();
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (attempt.ws === ws) signaling.onMessage(attempt, msg);
      };
      ws.onclose = (ev) => {
        if (attempt.closed || st.call !== attempt || attempt.ws !== ws) return;
        if (ev.code === CLOSE_REPLACED) {
          return app.controller.finish("left", "You joined from another tab or device", "This window was disconnected because the same link was opened elsewhere.", true);
        }
        if (ev.code === CLOSE_SESSION_ENDED) return app.controller.finish("ended", "The session has ended", endedText(""));
        if (attempt.welcomed && ev.code !== CLOSE_MEDIA_FAILED) return signaling.resume(attempt, `signaling closed (${ev.code})`);
        signaling.lostConnection(attempt, `signaling closed (${ev.code})`);
      };
    },

    /** Only the WebSocket was lost (a network drop, a proxy cutting idle connections): keep the
     * peer connections and join again with `resume`, for as long as the relay keeps our media
     * (RESUME_WINDOW_MS); then, or if the relay answers without `resumed`, a full reconnect. */
    resume(attempt, why) {
      const now = Date.now();
      if (!attempt.resuming) {
        console.warn("parley: signaling lost, resuming:", why);
        attempt.resuming = now;
        attempt.resumeTries = 0;
        // the relay restarts lost legs when we are back: no full reconnect for a slow leg now
        for (const label of ["publish", "subscribe"]) clearTimeout(attempt.pcTimers[`${label}-rebuild`]);
        app.ui.setState("reconnecting", "Reconnecting…");
        app.ui.banner("Connection lost. Reconnecting…");
      }
      if (now - attempt.resuming > (attempt.resumeWindowMs || RESUME_WINDOW_MS)) return signaling.lostConnection(attempt, `${why}; not resumed in time`);
      const delay = RETRY_DELAYS_MS[Math.min(attempt.resumeTries, RETRY_DELAYS_MS.length - 1)];
      attempt.resumeTries += 1;
      clearTimeout(attempt.resumeTimer);
      attempt.resumeTimer = setTimeout(() => signaling.openSocket(attempt, true), Math.min(delay, 2000));
    },

    onResumed(attempt, msg) {
      if (!msg.resumed) return signaling.lostConnection(attempt, "the relay no longer had our media");
      attempt.resuming = 0;
      clearTimeout(attempt.resumeTimer);
      // legs we found dead on a path the relay may not have noticed yet (an address change)
      for (const label of attempt.staleLegs || []) signaling.send(attempt, { type: "reconnect", pc: label });
      attempt.staleLegs = null;
      st.roster.clear();
      for (const p of msg.participants || []) {
        if (p.participant_id !== msg.participant_id && !p.left_at) st.roster.set(p.participant_id, p);
      }
      app.ui.setState("connected");
      app.ui.banner("");
      app.remote.renderRoster();
    },

    teardown(attempt) {
      if (!attempt || attempt.closed) return;
      attempt.closed = true;
      clearTimeout(attempt.welcomeTimer);
      clearInterval(attempt.pathTimer);
      clearTimeout(attempt.resumeTimer);
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
          return attempt.welcomed ? signaling.onResumed(attempt, msg) : signaling.onWelcome(attempt, msg);
        case "reconnect":
          if (msg.pc === "publish" || msg.pc === "subscribe") signaling.rebuildLeg(attempt, msg.pc);
          return;
        case "media_status":
          if (attempt.statusWaiter) attempt.statusWaiter(msg);
          return;
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
      if (attempt.resuming && !["session_ended", "session_not_found"].includes(msg.code)) {
        return signaling.lostConnection(attempt, `resume refused: ${text}`);
      }
      if (!attempt.welcomed || attempt.resuming) {
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
      if (typeof msg.resume_grace === "number" && msg.resume_grace > 0) attempt.resumeWindowMs = msg.resume_grace * 1000;
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
        iceTransportPolicy: forcedIcePolicy(location) || msg.ice_transport_policy || "all",
        bundlePolicy: "max-bundle",
      };
      attempt.pcConfig = config;
      signaling.newPc(attempt, "publish");
      signaling.newPc(attempt, "subscribe");
      attempt.flow = {};
      attempt.pathTimer = setInterval(() => {
        // the socket first: a path check under way (it may ask the relay too) holds it back
        signaling.checkSocket(attempt);
        signaling.checkPath(attempt);
      }, PATH_CHECK_MS);
      app.publisher.publishLocal(attempt);
      // the server starts a (re)joined participant with nothing turned off
      const local = st.local;
      if (local.mic && local.micMuted) app.publisher.trackState("microphone", false);
      if (local.cameraOff) app.publisher.trackState("camera", false);

      $("end-button").hidden = msg.role !== "agent";
      app.recording.show(msg.recording, msg.role);
      document.body.dataset.role = msg.role || "";
      app.ui.setState("connected");
      app.ui.banner("");
      app.ui.show("call");
      app.remote.renderRoster();
      app.media.render();
    },

    /** A new peer connection for one leg ("publish" or "subscribe") of this attempt. */
    newPc(attempt, label) {
      const pc = new RTCPeerConnection(attempt.pcConfig);
      attempt[label] = pc;
      pc.described = trickle(pc, (candidate) => {
        if (attempt[label] === pc) signaling.send(attempt, { type: "candidate", pc: label, candidate });
      });
      pc.onconnectionstatechange = () => signaling.watchPc(attempt, label, pc);
      if (label === "subscribe") pc.ontrack = () => app.remote.reconcile(attempt);
      return pc;
    },

    /** The relay rebuilds one leg (`reconnect`): replace only that peer connection. Publish:
     * a fresh offer with the same sources (the relay's producers carry on, nobody else
     * renegotiates). Subscribe: the relay's fresh offer follows. The session, the other leg
     * and the roster stay; the remote tiles freeze until the new leg carries media. */
    rebuildLeg(attempt, label) {
      if (attempt.closed || !attempt[label]) return;
      const old = attempt[label];
      old.onconnectionstatechange = null;
      old.ontrack = null;
      old.close();
      clearTimeout(attempt.pcTimers[label]);
      clearTimeout(attempt.pcTimers[`${label}-rebuild`]);
      clearTimeout(attempt.pcTimers[`${label}-probe`]);
      attempt.legRebuilds = (attempt.legRebuilds || 0) + 1;
      const pc = signaling.newPc(attempt, label);
      if (label === "publish") {
        if (attempt.answerWaiter) attempt.answerWaiter.reject(new Error("publish leg rebuilt"));
        attempt.senders = {};
        app.publisher.publishLocal(attempt);
      } else {
        attempt.tracks = new Map();
      }
      // the fallback: the full reconnect if the new leg does not connect in time
      attempt.pcTimers[`${label}-rebuild`] = setTimeout(() => {
        if (attempt[label] === pc && pc.connectionState !== "connected") {
          signaling.lostConnection(attempt, `${label} leg rebuild did not connect`);
        }
      }, LEG_REBUILD_TIMEOUT_MS);
    },

    /** One leg looks dead: ask the relay to rebuild it (it answers `reconnect`), or, with no
     * signaling or after too many rebuilds, reconnect in full. */
    legLost(attempt, label, why) {
      if (attempt.resuming) return; // the relay restarts lost legs when we are back
      const open = attempt.ws && attempt.ws.readyState === WebSocket.OPEN;
      if (!open || (attempt.legRebuilds || 0) >= MAX_LEG_REBUILDS) return signaling.lostConnection(attempt, why);
      console.warn("parley: media leg lost, rebuilding it:", why);
      signaling.send(attempt, { type: "reconnect", pc: label });
      // no answer soon: the socket is probably down too (or stuck in TCP back-off after a
      // network drop), so resume on a fresh one; the relay then restarts the lost legs
      const lost = attempt[label];
      clearTimeout(attempt.pcTimers[`${label}-probe`]);
      attempt.pcTimers[`${label}-probe`] = setTimeout(() => {
        if (attempt[label] === lost && !attempt.closed) signaling.resume(attempt, `no answer to reconnect ${label}`);
      }, RECONNECT_PROBE_MS);
      clearTimeout(attempt.pcTimers[`${label}-rebuild`]);
      attempt.pcTimers[`${label}-rebuild`] = setTimeout(() => {
        if (attempt[label] && attempt[label].connectionState !== "connected") signaling.lostConnection(attempt, `${why}; no rebuild`);
      }, LEG_REBUILD_TIMEOUT_MS);
    },

    /** An address change on a live interface fires no browser event and the old path just
     * goes silent (the peer connections notice after about 5 s, then 4 s more): when the
     * subscribe leg's steady media stops for MEDIA_STALL_MS, look whether the local address of
     * its path is still usable (the fast path); if it is gone, resume on a fresh socket at
     * once and have both legs rebuilt. Where there is no address to judge (a receive-only page
     * sees mDNS names or none, a path through TURN has the TURN server's) or it is still
     * there, ask the relay (`media_check`): no answer, or packets sent that never arrived,
     * resumes the same way. A stall with nothing sent (everybody muted) changes nothing. */
    async checkPath(attempt) {
      const pc = attempt.subscribe;
      if (attempt.closed || attempt.checkingPath || attempt.checkingSocket || attempt.resuming || !pc || pc.connectionState !== "connected") return;
      attempt.checkingPath = true;
      try {
        const { packets, address } = await pathStats(pc);
        const now = Date.now();
        const flow = attempt.flow;
        if (flow.pc !== pc || packets < flow.packets) {
          // a new leg, or fewer tracks (an m-line gone takes its counters along): start again
          attempt.flow = { pc, packets, at: now, steady: false };
          return;
        }
        if (packets > flow.packets) {
          const rate = ((packets - flow.packets) * 1000) / Math.max(1, now - flow.at);
          // a steady flow stays steady while packets come: the look that spans the moment
          // the path went away sees only the last few (over TCP to a TURN server, a trickle)
          attempt.flow = { pc, packets, at: now, steady: rate >= STEADY_PPS || flow.steady };
          return;
        }
        if (!flow.steady || now - flow.at < MEDIA_STALL_MS) return;
        flow.steady = false; // one look per stall
        // only a real address can be compared (mDNS names differ for every connection)
        if (address && !address.endsWith(".local")) {
          const usable = await addressUsable(address, HOST_PROBE_MS);
          if (attempt.closed || attempt.subscribe !== pc) return;
          if (!usable) return signaling.pathLost(attempt, `the local address ${address} is gone`);
        }
        const why = await signaling.relaySaysPathDead(attempt, pc, packets);
        if (why && !attempt.closed && attempt.subscribe === pc && !attempt.resuming) signaling.pathLost(attempt, why);
      } catch (err) {
        console.warn("parley: path check failed:", err);
      } finally {
        attempt.checkingPath = false;
      }
    },

    /** Nothing heard on the socket for SOCKET_QUIET_MS: ask the relay (`media_check`); no
     * answer means the socket is dead though the browser still calls it open (its address is
     * gone, and the media may have moved to the new one by itself): resume on a fresh one. */
    async checkSocket(attempt) {
      if (attempt.closed || attempt.checkingPath || attempt.checkingSocket || attempt.resuming || !attempt.welcomed) return;
      if (!attempt.ws || attempt.ws.readyState !== WebSocket.OPEN || Date.now() - attempt.heardAt < SOCKET_QUIET_MS) return;
      attempt.checkingSocket = true;
      try {
        const status = await signaling.mediaStatus(attempt, MEDIA_CHECK_TIMEOUT_MS);
        if (status || attempt.closed || attempt.resuming) return;
        const why = "no answer to media_check on a quiet socket";
        // the subscribe leg silent too: its path went with the socket's, have both rebuilt
        const flow = attempt.flow || {};
        if (flow.pc && flow.pc === attempt.subscribe && Date.now() - flow.at > MEDIA_STALL_MS) return signaling.pathLost(attempt, why);
        signaling.resume(attempt, why);
        signaling.openSocket(attempt, true);
      } finally {
        attempt.checkingSocket = false;
      }
    },

    /** The path of both legs is gone: resume on a fresh socket at once (the old one most
     * likely used the same path) and have the legs rebuilt after the `resumed` welcome. */
    pathLost(attempt, why) {
      console.warn(`parley: ${why}; resuming`);
      attempt.staleLegs = ["publish", "subscribe"].filter((label) => attempt[label] && attempt[label].connectionState !== "new");
      signaling.resume(attempt, why);
      signaling.openSocket(attempt, true);
    },

    /** The relay's `media_status` for our subscribe leg, or null when none comes within `ms`
     * (or the socket is not open). One question at a time (checkPath runs one at a time). */
    mediaStatus(attempt, ms) {
      if (!attempt.ws || attempt.ws.readyState !== WebSocket.OPEN) return Promise.resolve(null);
      return new Promise((resolve) => {
        const timer = setTimeout(() => answered(null), ms);
        const answered = (msg) => {
          clearTimeout(timer);
          if (attempt.statusWaiter === answered) attempt.statusWaiter = null;
          resolve(msg);
        };
        attempt.statusWaiter = answered;
        signaling.send(attempt, { type: "media_check" });
      });
    },

    /** Why the subscribe leg's path is dead as the relay tells (null: not dead, or not ours to
     * judge): no answer to `media_check` (the socket is gone too, as after an address change),
     * or the relay sent MEDIA_CHECK_MIN_SENT packets or more between two answers while none
     * arrived (`packets`: what the leg had received when it stalled). */
    async relaySaysPathDead(attempt, pc, packets) {
      const first = await signaling.mediaStatus(attempt, MEDIA_CHECK_TIMEOUT_MS);
      if (!first) return "no answer to media_check";
      if (!first.connected) return null; // the relay rebuilds that leg itself (its reconnect follows)
      await new Promise((resolve) => setTimeout(resolve, MEDIA_CHECK_GAP_MS));
      if (attempt.closed || attempt.subscribe !== pc) return null;
      const second = await signaling.mediaStatus(attempt, MEDIA_CHECK_TIMEOUT_MS);
      if (!second) return "no answer to media_check";
      if ((await pathStats(pc)).packets > packets) return null; // media is back
      const sent = second.sent - first.sent;
      return sent >= MEDIA_CHECK_MIN_SENT ? `the relay sent ${sent} packets that never arrived` : null;
    },

    watchPc(attempt, label, pc) {
      if (attempt.closed || attempt[label] !== pc) return;
      const s = pc.connectionState;
      clearTimeout(attempt.pcTimers[label]);
      if (s === "connected") attempt.legRebuilds = 0; // the limit is for rebuilds in a row
      if (s === "failed") {
        signaling.legLost(attempt, label, `${label} peer connection failed`);
      } else if (s === "disconnected") {
        attempt.pcTimers[label] = setTimeout(() => {
          if (attempt[label] === pc && ["disconnected", "failed"].includes(pc.connectionState)) {
            signaling.legLost(attempt, label, `${label} peer connection disconnected`);
          }
        }, PC_DISCONNECTED_GRACE_MS);
      }
    },
  };
  window.addEventListener("offline", () => {
    if (st.call) st.call.wentOffline = true;
  });
  window.addEventListener("online", () => signaling.onOnline());
  return signaling;
}
