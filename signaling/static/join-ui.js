// parley join page: the page chrome (status, sections, banner, button labels).

import { STATE_LABELS } from "./join-config.js";

export const $ = (id) => document.getElementById(id);

export function initials(text) {
  const words = String(text || "?").trim().split(/\s+/).filter(Boolean);
  return (words.length > 1 ? words[0][0] + words[words.length - 1][0] : (words[0] || "?").slice(0, 2)).toUpperCase();
}

export function roleLabel(role) {
  return { agent: "Agent", customer: "Customer", supervisor: "Supervisor" }[role] || role || "";
}

export function setLabel(button, text) {
  button.querySelector(".btn-label").textContent = text;
}

export function createUi(app) {
  return {
    /** The page's phase, shown in the status pill (and on <body data-state>). */
    setState(next, text) {
      app.state.phase = next;
      $("status").dataset.state = next;
      $("status-text").textContent = text || STATE_LABELS[next] || next;
      document.body.dataset.state = next;
    },

    show(section) {
      for (const id of ["lobby", "call", "after"]) $(id).hidden = id !== section;
    },

    banner(text, action) {
      $("banner").hidden = !text;
      $("banner-text").textContent = text || "";
      const btn = $("banner-action");
      btn.hidden = !action;
      if (action) {
        btn.textContent = action.label;
        btn.onclick = action.run;
      }
    },
  };
}
