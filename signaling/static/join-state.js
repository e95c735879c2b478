// parley join page: the page's state, one object created at start-up (join.js) and passed to
// every part of the page. No module of the page keeps state of its own at module level.

/** Everything the page knows, for the page's whole life (across connection attempts). */
export function createState(token) {
  return {
    token,
    joinedKey: `parley.joined.${token}`, // sessionStorage: a reload rejoins by itself
    phase: "idle", // idle | connecting | connected | reconnecting | ended | left | failed
    name: "",
    call: null, // the current attempt (see createAttempt)
    attemptSeq: 0,
    retries: 0,
    retryTimer: null,
    mediaReady: Promise.resolve(), // the lobby's getUserMedia; joining waits for it
    roster: new Map(), // participant_id -> participant (others only)
    // what the server decides for every page (participant_state, speaking, connection_quality)
    states: new Map(), // participant_id -> {camera, microphone, screen}
    speaking: [], // participant_ids speaking now, first started first
    quality: new Map(), // participant_id -> "good" | "fair" | "poor"
    joined: { participantId: null, role: null }, // the last welcome (kept after leaving)
    local: {
      mic: null, // MediaStreamTrack or null
      camera: null,
      screen: null,
      micMuted: false,
      cameraOff: false,
      noMedia: "", // why we have no mic/camera, shown in the lobby
    },
  };
}

/** One connection attempt: a WebSocket and, after the welcome, the two peer connections.
 * A reconnect is a new attempt with the same token. */
export function createAttempt(id) {
  return {
    id,
    closed: false,
    welcomed: false,
    ws: null,
    publish: null,
    subscribe: null,
    stream: new MediaStream(), // msid for our published tracks
    senders: {}, // source -> RTCRtpTransceiver on the publish pc
    tracks: new Map(), // mid -> {mid, participant_id, kind, source} on the subscribe pc
    publishChain: Promise.resolve(),
    subscribeChain: Promise.resolve(),
    answerWaiter: null,
    pcTimers: {},
    welcomeTimer: null,
    participantId: null,
    role: null,
  };
}
