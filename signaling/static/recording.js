// parley recording indicator and controls (docs/recording.md).
//
// Everyone sees an always-visible "Recording" badge in the top bar while the session records
// (the customer must know); agents also get a Start recording / Stop recording button. The
// server is the source of truth: the welcome carries `recording`, then every change arrives as
// {"type": "recording", "state"}; the button only asks ({"type": "recording", "action"}).
// A part of the join page like the others (join.js): createRecording(app) keeps its state in
// the object it returns, none at module level.

import { $ } from "./join-ui.js";

/** The recording part: `show(state, role?)` on the welcome and on each change, `hide()` at the end. */
export function createRecording(app) {
  let current = "stopped";
  let role = "";
  let indicator = null;
  let button = null;

  function send(msg) {
    const call = app.state.call;
    if (call && !call.closed) app.signaling.send(call, msg);
  }

  function build() {
    if (indicator) return;
    indicator = document.createElement("div");
    indicator.id = "recording-indicator";
    indicator.className = "rec-indicator";
    indicator.setAttribute("role", "status");
    indicator.setAttribute("aria-live", "polite");
    indicator.hidden = true;
    indicator.innerHTML = '<span class="rec-dot" aria-hidden="true"></span><span>Recording</span>';
    indicator.title = "This call is being recorded";
    const bar = document.querySelector(".topbar");
    const status = $("status");
    if (bar && status) bar.insertBefore(indicator, status);
    else document.body.prepend(indicator);

    button = document.createElement("button");
    button.id = "record-button";
    button.type = "button";
    button.className = "btn control";
    button.hidden = true;
    button.innerHTML = '<span class="rec-dot" aria-hidden="true"></span><span class="btn-label">Start recording</span>';
    button.addEventListener("click", () => {
      button.disabled = true; // until the server says what happened
      send({ type: "recording", action: current === "recording" ? "stop" : "start" });
      setTimeout(() => { if (button) button.disabled = false; }, 3000);
    });
    const controls = document.querySelector(".controls");
    const leave = $("leave-button");
    if (controls) controls.insertBefore(button, leave || null);
  }

  return {
    init: build,

    /** The recording state from the welcome (with the participant's role) or a later change. */
    show(state, newRole) {
      build();
      if (newRole !== undefined) role = newRole || "";
      current = state === "recording" ? "recording" : "stopped";
      const on = current === "recording";
      indicator.hidden = !on;
      document.body.dataset.recording = current;
      button.hidden = role !== "agent";
      button.disabled = false;
      button.dataset.recording = current;
      button.querySelector(".btn-label").textContent = on ? "Stop recording" : "Start recording";
    },

    /** The call is over: no badge, no button. */
    hide() {
      if (!indicator) return;
      indicator.hidden = true;
      button.hidden = true;
    },
  };
}
