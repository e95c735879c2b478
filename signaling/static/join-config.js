// parley join page: constants, and what the page's URL says. Nothing here changes at run time.

export const ANSWER_TIMEOUT_MS = 15000;
export const WELCOME_TIMEOUT_MS = 15000;
export const PC_DISCONNECTED_GRACE_MS = 4000; // "disconnected" this long means the path is gone
export const LEG_REBUILD_TIMEOUT_MS = 30000; // a rebuilt leg not connected by then: full reconnect
export const MAX_LEG_REBUILDS = 5; // in a row, none connected; then a lost leg means a full reconnect
export const RESUME_WINDOW_MS = 45000; // unless the welcome says (resume_grace): how long the relay keeps our media
// after the "online" event Chromium's WebRTC network list lags (0.5-2 s): look every
// ONLINE_POLL_MS for a usable local address, resume as soon as there is one, at the latest
// after ONLINE_WAIT_MAX_MS (join-signaling.js, networkReady)
export const ONLINE_POLL_MS = 150;
export const ONLINE_WAIT_MAX_MS = 3000;
export const RECONNECT_PROBE_MS = 2000; // no answer to our reconnect: resume on a fresh socket
// an address change on a live interface fires no browser event: the subscribe leg's media
// stopping is the first sign, then the address its path used is checked (join-signaling.js)
export const PATH_CHECK_MS = 500; // how often the subscribe leg's received packets are read
export const MEDIA_STALL_MS = 700; // no packet this long after a steady flow: check the path
export const STEADY_PPS = 20; // a steady flow (audio alone is 50 packets a second)
export const HOST_PROBE_MS = 400; // how long to look for the path's address among those usable now
// no address to judge (a receive-only page, a path through TURN) or it is still there: ask the
// relay (`media_check`) whether it keeps sending while nothing arrives
export const MEDIA_CHECK_TIMEOUT_MS = 800; // no `media_status` by then: the socket is dead too
export const MEDIA_CHECK_GAP_MS = 400; // between the two `media_check`s compared
export const MEDIA_CHECK_MIN_SENT = 5; // the relay sent at least this many meanwhile: the path is dead
// nothing heard on the socket this long: ask (`media_check`); no answer: it is dead (a TCP
// connection from an address that is gone stays "open" for minutes while the media may have
// found the new address by itself, as a receive-only page's any-address UDP socket does)
export const SOCKET_QUIET_MS = 4000;
export const RETRY_DELAYS_MS = Object.freeze([500, 1000, 2000, 4000, 8000]);
// WebSocket close codes from the server (signaling/sessions.py); 4001 (media failed) reconnects
export const CLOSE_REPLACED = 4000;
export const CLOSE_MEDIA_FAILED = 4001;
export const CLOSE_SESSION_ENDED = 4002;
export const CLOSE_TEST_DROP = 4099;

export const STATE_LABELS = Object.freeze({
  idle: "Not connected",
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  ended: "Session ended",
  left: "You left",
  failed: "Could not join",
});

/** The join token in the page's path (/join/<token>). */
export function tokenFromLocation(loc) {
  return decodeURIComponent(loc.pathname.replace(/^.*\/join\//, "").replace(/\/+$/, ""));
}

/** Best effort, for the lobby text only: the relay verifies the token, we never do. */
export function decodeTokenHint(token) {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(json);
  } catch {
    return {};
  }
}

/** `?ice=relay` on the join page's URL: this page's media goes through the relay's TURN servers
 * only (RTCPeerConnection iceTransportPolicy "relay"), whatever the server's
 * --ice-transport-policy says; a page can only tighten it. null: as the server says. */
export function forcedIcePolicy(loc) {
  return new URLSearchParams(loc.search).get("ice") === "relay" ? "relay" : null;
}

export function wsUrl(loc) {
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/api/v1/ws`;
}

export function endedText(reason) {
  const known = {
    ended_by_agent: "The agent ended the session.",
    ended: "The session was ended.",
    deleted: "The session was ended.",
    expired: "The session has expired.",
  };
  return known[reason] || (reason ? `Reason: ${String(reason).replace(/_/g, " ")}.` : "Thank you for joining.");
}
