// parley join page: publishing. The page offers on its publish connection (trickle ICE), one
// transceiver per source (microphone, camera, screen). Mute, camera off and share tell the
// server (`track_state`; it tells everyone `participant_state`) and stop sending: the sender's
// encoding goes inactive (`encodings[].active = false`) and its track is replaced with null
// (Firefox keeps sending about a frame a second after replaceTrack(null) alone).

import { ANSWER_TIMEOUT_MS } from "./join-config.js";
import { getTrack, mediaErrorText } from "./join-media.js";

export function createPublisher(app) {
  const st = app.state;
  const local = st.local;
  const live = () => (st.call && !st.call.closed ? st.call : null);
  const publisher = {
    addSender(attempt, source, track, kind) {
      const t = attempt.publish.addTransceiver(track || kind, {
        direction: "sendonly",
        streams: [attempt.stream],
        sendEncodings: [{ active: !!track }],
      });
      attempt.senders[source] = t;
      return t;
    },

    /** Start or stop sending on a transceiver: the track and the encoding's `active` flag. */
    async setSending(t, track) {
      const params = t.sender.getParameters();
      if (params.encodings && params.encodings.length) {
        for (const e of params.encodings) e.active = !!track;
        try {
          await t.sender.setParameters(params);
        } catch (err) {
          console.warn("parley: setParameters failed:", err);
        }
      }
      await t.sender.replaceTrack(track);
    },

    /** Tell the server a source was turned on or off (the others see it from its reply). */
    trackState(source, enabled) {
      const call = live();
      if (call && call.welcomed) app.signaling.send(call, { type: "track_state", source, enabled });
    },

    /** Send what we have (microphone, camera, screen) on a new publish connection. */
    publishLocal(attempt) {
      if (local.mic) publisher.addSender(attempt, "microphone", local.micMuted ? null : local.mic, "audio");
      if (local.camera || local.cameraOff) publisher.addSender(attempt, "camera", local.cameraOff ? null : local.camera, "video");
      if (local.screen) publisher.addSender(attempt, "screen", local.screen, "video");
      if (Object.keys(attempt.senders).length) publisher.renegotiate(attempt);
    },

    /** Queue one offer/answer round on the publish connection (rounds never overlap). */
    renegotiate(attempt) {
      const run = () => publisher.publishOnce(attempt);
      attempt.publishChain = attempt.publishChain.then(run, run).catch((err) => {
        if (attempt.closed || /leg rebuilt/.test(String(err))) return;
        console.warn("parley: publish negotiation failed:", err);
        if (/timed out/.test(String(err))) app.signaling.lostConnection(attempt, `publish: ${err}`);
        else app.ui.banner(`Could not update what you send: ${err.message || err}`);
      });
      return attempt.publishChain;
    },

    async publishOnce(attempt) {
      if (attempt.closed) return;
      const pc = attempt.publish;
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
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
      // at once: the candidates follow as they are found (a rebuilt leg never waits for
      // gathering, which can take seconds right after a network change)
      app.signaling.send(attempt, { type: "offer", pc: "publish", sdp: pc.localDescription.sdp, sources });
      pc.described();
      try {
        const msg = await answer;
        if (attempt.closed) return;
        await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      } finally {
        attempt.answerWaiter = null;
      }
    },

    async toggleMute() {
      if (!local.mic) return;
      local.micMuted = !local.micMuted;
      local.mic.enabled = !local.micMuted;
      publisher.trackState("microphone", !local.micMuted);
      const t = live() ? st.call.senders.microphone : null;
      if (t) await publisher.setSending(t, local.micMuted ? null : local.mic);
      app.media.render();
    },

    async toggleCamera() {
      const t = live() ? st.call.senders.camera : null;
      if (!local.cameraOff) {
        local.cameraOff = true;
        publisher.trackState("camera", false);
        if (t) await publisher.setSending(t, null);
        app.media.stopTrack("camera"); // turn the camera light off too
        app.media.render();
        return;
      }
      try {
        local.camera = await getTrack("video");
      } catch (err) {
        app.ui.banner(mediaErrorText(err, "camera"));
        return;
      }
      local.cameraOff = false;
      const call = live();
      if (call && call.publish) {
        if (t) await publisher.setSending(t, local.camera);
        else {
          publisher.addSender(call, "camera", local.camera, "video");
          publisher.renegotiate(call);
        }
      }
      publisher.trackState("camera", true);
      app.media.render();
    },

    async toggleShare() {
      if (local.screen) return publisher.stopShare();
      let stream;
      try {
        stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
      } catch (err) {
        if (err.name !== "NotAllowedError") app.ui.banner(`Could not share your screen: ${err.message || err.name}`);
        return;
      }
      const track = stream.getVideoTracks()[0];
      if ("contentHint" in track) track.contentHint = "detail";
      track.addEventListener("ended", () => {
        if (local.screen === track) publisher.stopShare();
      });
      local.screen = track;
      const call = live();
      if (call && call.publish) {
        const t = call.senders.screen;
        if (t && !t.stopped) {
          // reuse the m-line from an earlier share
          t.direction = "sendonly";
          await publisher.setSending(t, track);
        } else {
          publisher.addSender(call, "screen", track, "video");
        }
        publisher.renegotiate(call);
      }
      publisher.trackState("screen", true);
      app.media.render();
    },

    async stopShare() {
      const track = local.screen;
      local.screen = null;
      if (track) track.stop();
      publisher.trackState("screen", false);
      const call = live();
      const t = call ? call.senders.screen : null;
      if (t) {
        await publisher.setSending(t, null);
        t.direction = "inactive";
        publisher.renegotiate(call);
      }
      app.media.render();
    },
  };
  return publisher;
}
