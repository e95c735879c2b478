// parley join page: local media (the lobby): camera and microphone, device choice, the
// preview, the self tile, the call buttons' labels, and the lobby's mic level meter.

import { $, initials, setLabel } from "./join-ui.js";

export function mediaErrorText(err, what) {
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

export async function getTrack(kind) {
  const stream = await navigator.mediaDevices.getUserMedia({ [kind]: constraints(kind) });
  return stream.getTracks()[0];
}

export function createLocalMedia(app) {
  const local = app.state.local;
  const media = {
    meter: null, // the lobby's level meter: {track, ctx, raf}

    async acquire() {
      media.stopTrack("mic");
      media.stopTrack("camera");
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        local.noMedia = mediaErrorText(null, "camera and microphone");
        media.render();
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
      // not awaited: Firefox resolves enumerateDevices() only once a background tab gets focus,
      // and joining must not wait for it (the device lists fill in whenever it answers)
      media.listDevices().catch((err) => console.warn("parley: no device list:", err));
      media.render();
    },

    stopTrack(slot) {
      if (local[slot]) local[slot].stop();
      local[slot] = null;
    },

    release() {
      for (const slot of ["mic", "camera", "screen"]) media.stopTrack(slot);
      $("preview-video").srcObject = null;
      $("self-video").srcObject = null;
      media.stopMeter();
    },

    async listDevices() {
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
    },

    async switchDevice(kind) {
      const slot = kind === "audio" ? "mic" : "camera";
      const sel = kind === "audio" ? $("mic-select") : $("camera-select");
      localStorage.setItem(`parley.device.${kind}`, sel.value);
      media.stopTrack(slot);
      try {
        local[slot] = await getTrack(kind);
      } catch (err) {
        local.noMedia = mediaErrorText(err, kind === "audio" ? "microphone" : "camera");
      }
      media.render();
    },

    /** The preview, the self tile and the call buttons, from `state.local`. */
    render() {
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
      $("self-initials").textContent = initials(app.state.name || "You");
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
      media.startMeter();
    },

    // mic level meter in the lobby (also tells the user the mic works)
    startMeter() {
      const track = local.mic;
      if (!track || $("lobby").hidden) return media.stopMeter();
      if (media.meter && media.meter.track === track) return;
      media.stopMeter();
      try {
        const ctx = new AudioContext();
        const src = ctx.createMediaStreamSource(new MediaStream([track]));
        const an = ctx.createAnalyser();
        an.fftSize = 512;
        src.connect(an);
        const buf = new Float32Array(an.fftSize);
        const tick = () => {
          if (!media.meter || media.meter.ctx !== ctx) return;
          an.getFloatTimeDomainData(buf);
          let sum = 0;
          for (const v of buf) sum += v * v;
          const level = Math.min(1, Math.sqrt(sum / buf.length) * 4);
          $("mic-meter").style.width = `${Math.round(level * 100)}%`;
          media.meter.raf = requestAnimationFrame(tick);
        };
        media.meter = { track, ctx, raf: requestAnimationFrame(tick) };
      } catch {
        media.meter = null;
      }
    },

    stopMeter() {
      if (!media.meter) return;
      cancelAnimationFrame(media.meter.raf);
      media.meter.ctx.close().catch(() => {});
      media.meter = null;
    },
  };
  return media;
}
