"""One Chromium participant's network interface goes down for 10 s and comes back (issue 12).

Run by tests/signaling/test_reconnect_netdrop.py inside a network namespace of its own (A) with a
veth pair: v0 (10.201.0.1) stays in A, where `parley serve` and the pages of Alice and Sue run;
v1 (10.201.0.2) is moved into a second namespace (B), held by a `sleep`, where Carl's Chromium
runs (launched through nsenter). `ip link set v1 down` in B is Carl's network dropping: media and
signaling together. Prints one JSON line of figures; exit status 0 when the call recovered
without a full reconnect and Sue never lost Alice's video.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from playwright import sync_api  # noqa: E402

from tests.signaling.browser_support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    PAIRS_JS,
    ParleyServer,
    media_stats,
    participant_id,
    wait_for_media,
    wait_for_state,
)

SERVER_IP, CARL_IP = "10.201.0.1", "10.201.0.2"
DROP_SECONDS = float(os.environ.get("PARLEY_NETDROP_SECONDS", "10"))
"""How long the interface stays down (10 s in the test; 30 s for the long-drop figures)."""
MODE = os.environ.get("PARLEY_NETDROP_MODE", "down")
"""``down``: v1 down, then up again; ``readdress``: v1 down, then up with another address
(NEW_IP, as after moving to another network); ``switch``: the address changes while v1 stays
up (the old one removed, the new one added at once; DROP_SECONDS unused)."""
CARL = os.environ.get("PARLEY_NETDROP_CARL", "av")
"""How Carl joins: ``av`` with camera and microphone; ``recvonly`` with neither granted (he
only receives, and Chromium hides his host addresses); ``turn`` with both, relay-only through
the embedded TURN server over TCP (the join page's ``?ice=relay``; the server hands out only
its TCP TURN URL)."""
NEW_IP = "10.201.0.3"
SETUP_FAILED = 3
"""Exit status when a participant never connected in the first place, before any network change
(the caller may run the scenario once more; it reports the first try's diagnostics)."""
AV = ("camera", "microphone")
TRACE_JS = """
(() => {
  const Pc = window.RTCPeerConnection, Ws = window.WebSocket;
  let n = 0;
  window.RTCPeerConnection = function (...args) {
    const pc = new Pc(...args), id = ++n, log = (t) => console.log(`trace pc${id} ${t}`);
    pc.addEventListener("connectionstatechange", () => log(pc.connectionState));
    pc.addEventListener("icecandidate", (e) => log(e.candidate ? e.candidate.candidate.slice(0, 70) : "end"));
    return pc;
  };
  window.RTCPeerConnection.prototype = Pc.prototype;
  window.WebSocket = function (...args) {
    const ws = new Ws(...args);
    ws.addEventListener("open", () => console.log("trace ws open"));
    ws.addEventListener("message", (e) => console.log(`trace ws < ${String(e.data).slice(0, 60)}`));
    return ws;
  };
  Object.assign(window.WebSocket, Ws);
  window.WebSocket.prototype = Ws.prototype;
  for (const ev of ["online", "offline"]) window.addEventListener(ev, () => console.log(`trace ${ev}`));
  if (navigator.connection) {
    navigator.connection.addEventListener("change", () => console.log(`trace connection change ${navigator.connection.type}`));
  }
})();
"""


SOCKET_JS = """
() => new Promise((resolve) => {
  const ws = window.parley.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return resolve(false);
  const done = (answered) => { clearTimeout(timer); ws.removeEventListener("message", on); resolve(answered); };
  const on = (e) => { if (String(e.data).includes('"media_status"')) done(true); };
  const timer = setTimeout(() => done(false), 1500);
  ws.addEventListener("message", on);
  ws.send(JSON.stringify({type: "media_check"}));
})
"""
"""Whether the page's current WebSocket carries an answer from the relay (a socket whose
address is gone stays "open" in the browser for minutes)."""

SEES_JS = """
(id) => [window.parley.participants.some((p) => p.participant_id === id),
         !!(window.parley.states[id] || {}).reconnecting]
"""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, timeout=10)


def namespace_b() -> subprocess.Popen[bytes]:
    """A second network namespace, held by a sleeping process, with v1 in it."""
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", str(int(DROP_SECONDS) + 120)])
    ns = f"/proc/{holder.pid}/ns/net"
    for _ in range(50):  # bounded: the namespace exists once unshare has exec'd sleep
        if os.readlink(ns) != os.readlink("/proc/self/ns/net"):
            break
        time.sleep(0.05)
    sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    sh("ip", "addr", "add", f"{SERVER_IP}/24", "dev", "v0")
    sh("ip", "link", "set", "v0", "up")
    sh("ip", "link", "set", "v1", "netns", str(holder.pid))
    in_b = ["nsenter", f"--net={ns}"]
    if os.environ.get("PARLEY_NETDROP_IPV6") == "0":
        # a diagnostic knob, not the test's set-up: without IPv6, v1 coming up brings no
        # link-local address that finishes duplicate address detection a second later
        sh(*in_b, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
        sh(*in_b, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
        sh(*in_b, "sysctl", "-q", "-w", "net.ipv6.conf.v1.disable_ipv6=1")
    sh(*in_b, "ip", "link", "set", "lo", "up")
    sh(*in_b, "ip", "addr", "add", f"{CARL_IP}/24", "dev", "v1")
    sh(*in_b, "ip", "link", "set", "v1", "up")
    return holder


def frames(page: Any, key: str) -> int:
    """Video frames decoded, or audio packets received, of one remote track."""
    stats = media_stats(page)["media"].get(key)
    if not stats:
        return 0
    return int(stats["packetsReceived" if key.endswith("/microphone") else "framesDecoded"])


def media_back(rises: list[float], down_at: float, up_at: float) -> float | None:
    """Seconds from the network coming up (or the address changing) to the end of the longest
    gap in ``rises`` (the times a counter went up) since the drop, when that gap ends after it
    and media kept coming (3 more rises); otherwise, once it has flowed without a 0.5 s gap
    until 1.5 s after, to the first rise 0.3 s after it (the media never stopped). A few packets or frames still in flight when the path went (over
    TCP to a TURN server, say) do not count as media back."""
    times = [t for t in rises if t < down_at][-1:] + [t for t in rises if t >= down_at]
    gaps = [(b - a, b) for a, b in zip(times, times[1:], strict=False)]
    longest, end = max(gaps, default=(0.0, 0.0))
    if longest >= 0.5 and end > up_at:
        return round(end - up_at, 2) if len([t for t in times if t > end]) >= 3 else None
    if not times or times[-1] < up_at + 1.5:
        return None  # too early to tell a short hiccup from the start of a gap
    after = [t for t in rises if t > up_at + 0.3]
    return round(after[0] - up_at, 2)


def main() -> int:
    holder = namespace_b()
    in_b = ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
    wrapper = Path(tempfile.mkdtemp(prefix="parley-netdrop-")) / "chromium-in-b"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(in_b)} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    server = ParleyServer()
    origin = f"http://{SERVER_IP}:{server.port}"
    server.extra = ["--host", "0.0.0.0", "--public-url", origin, "--media-address", SERVER_IP]
    if CARL == "turn":
        server.extra += ["--turn-transports", "tcp"]
    args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"]
    # receive-only: no prompt answered for him (the others' fake UI accepts every prompt)
    carl_args = [a for a in args if a != "--use-fake-ui-for-media-stream" or CARL != "recvonly"]
    sends = CARL != "recvonly"
    server.start()
    try:
        with sync_api.sync_playwright() as p:
            here = p.chromium.launch(executable_path=CHROMIUM, args=args)
            there = p.chromium.launch(executable_path=str(wrapper), args=carl_args)
            session = server.create_session("netdrop")
            sue_url = server.api(
                "POST",
                f"/api/v1/sessions/{session['session_id']}/invites",
                {"role": "agent", "name": "Sue"},
            )["url"]
            pages: dict[str, Any] = {}
            carl_url = session["customer_url"] + ("?ice=relay" if CARL == "turn" else "")
            for browser, url, name in (
                (here, session["agent_url"], "Alice"),
                (there, carl_url, "Carl"),
                (here, sue_url, "Sue"),
            ):
                granted = ["camera", "microphone"] if name != "Carl" or sends else []
                page = browser.new_context(permissions=granted).new_page()
                if name == "Carl" and os.environ.get("PARLEY_NETDROP_CONSOLE"):
                    page.add_init_script(TRACE_JS)
                page.set_default_timeout(20_000)
                page.goto(url)
                page.get_by_label("Your name").fill(name)
                page.get_by_role("button", name="Join", exact=True).click()
                try:
                    wait_for_state(page, "connected")
                except sync_api.TimeoutError:
                    shown = page.evaluate(
                        "() => window.parley && [window.parley.state, window.parley.attempts]"
                    )
                    sys.stderr.write(
                        f"{name} never connected (page: {shown})\n{server.log_tail(60)}\n"
                    )
                    return SETUP_FAILED
                pages[name] = page
            console: list[tuple[float, str]] = []
            pages["Carl"].on("console", lambda m: console.append((time.monotonic(), m.text)))
            ids = {name: participant_id(page) for name, page in pages.items()}
            senders = [n for n in pages if n != "Carl" or sends]
            for name, page in pages.items():
                wait_for_media(page, {ids[o]: AV for o in senders if o != name}, timeout=40)
            attempts = {n: pg.evaluate("() => window.parley.attempts") for n, pg in pages.items()}
            carl_sends = pages["Carl"].evaluate("() => window.parley.localTracks.length") > 0
            carl_path = pages["Carl"].evaluate(PAIRS_JS)["subscribe"]["local"]
            watched = {
                "Alice <- Carl": (pages["Alice"], f"{ids['Carl']}/camera"),
                "Carl <- Alice": (pages["Carl"], f"{ids['Alice']}/camera"),
                "Sue <- Alice": (pages["Sue"], f"{ids['Alice']}/camera"),
                "Alice <- Carl audio": (pages["Alice"], f"{ids['Carl']}/microphone"),
                "Carl <- Alice audio": (pages["Carl"], f"{ids['Alice']}/microphone"),
            }
            if not sends:
                del watched["Alice <- Carl"], watched["Alice <- Carl audio"]
            rises: dict[str, list[float]] = {k: [] for k in watched}
            last = {k: -1 for k in watched}

            def sample() -> None:
                for key, (page, track) in watched.items():
                    count = frames(page, track)
                    if count > last[key]:
                        rises[key].append(time.monotonic())
                    last[key] = count

            seen_by_sue: list[tuple[float, bool, bool]] = []
            """(time, Carl listed, Carl reconnecting) as Sue's page shows them, about once a second
            from the drop until Carl's media is back. The relay notices a silent leg after
            ``dead_leg_after`` (8 s): in a 10 s drop, Sue may see it only as Carl comes back."""

            def sue_sees_carl() -> None:
                listed, away = pages["Sue"].evaluate(SEES_JS, ids["Carl"])
                seen_by_sue.append((time.monotonic(), bool(listed), bool(away)))

            sample()
            down_at = time.monotonic()
            if MODE == "switch":
                # the old one first: removing a primary address removes its secondaries too
                sh(*in_b, "ip", "addr", "del", f"{CARL_IP}/24", "dev", "v1")
                sh(*in_b, "ip", "addr", "add", f"{NEW_IP}/24", "dev", "v1")
            else:
                sh(*in_b, "ip", "link", "set", "v1", "down")
                while time.monotonic() - down_at < DROP_SECONDS:
                    sample()
                    if not seen_by_sue or time.monotonic() - seen_by_sue[-1][0] > 1.0:
                        sue_sees_carl()
                    pages["Sue"].wait_for_timeout(100)  # lets the pages run
                if MODE == "readdress":
                    sh(*in_b, "ip", "addr", "del", f"{CARL_IP}/24", "dev", "v1")
                    sh(*in_b, "ip", "addr", "add", f"{NEW_IP}/24", "dev", "v1")
                sh(*in_b, "ip", "link", "set", "v1", "up")
            up_at = time.monotonic()
            for _ in range(300):  # bounded: about 30 s after the network is back
                sample()
                if all(media_back(rises[k], down_at, up_at) is not None for k in watched):
                    break
                if not seen_by_sue or time.monotonic() - seen_by_sue[-1][0] > 1.0:
                    sue_sees_carl()  # the relay may tell the others while Carl comes back
                pages["Sue"].wait_for_timeout(100)
            signaling_back = None
            for _ in range(20):  # bounded: 20 questions of at most 1.5 s
                if pages["Carl"].evaluate(SOCKET_JS):
                    signaling_back = round(time.monotonic() - up_at, 2)
                    break
                pages["Sue"].wait_for_timeout(500)
            figures: dict[str, Any] = {
                "mode": MODE,
                "Carl's signaling answers after network up (s)": signaling_back,
                "carl": CARL,
                "drop_s": DROP_SECONDS,
                "Carl sends": carl_sends,
                "Carl's subscribe path (local side)": carl_path,
            }
            for key in watched:
                figures[f"{key}: media back after network up (s)"] = media_back(
                    rises[key], down_at, up_at
                )
                before = [t for t in rises[key] if t < down_at][-1:]
                times = before + [t for t in rises[key] if t >= down_at]
                gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
                figures[f"{key}: longest gap (s)"] = round(max(gaps, default=0.0), 2)
            now_attempts = {
                n: pg.evaluate("() => window.parley.attempts") for n, pg in pages.items()
            }
            figures["full reconnects"] = {n: now_attempts[n] - attempts[n] for n in pages}
            away = [at - down_at for at, _, reconnecting in seen_by_sue if reconnecting]
            sue_sees_carl()
            figures["Sue: Carl listed throughout the drop"] = all(x[1] for x in seen_by_sue)
            figures["Sue: Carl shown reconnecting from (s after the drop)"] = (
                round(away[0], 1) if away else None
            )
            sue_sees_carl()
            figures["Sue: Carl reconnecting after recovery"] = seen_by_sue[-1][2]
            figures["states"] = {
                n: pg.evaluate("() => window.parley.state") for n, pg in pages.items()
            }
            if os.environ.get("PARLEY_NETDROP_CONSOLE"):
                figures["Carl's console"] = [
                    f"{at - up_at:+.2f} {text[:160]}" for at, text in console if at > down_at
                ]
            print(json.dumps(figures))
            ok = (
                all(figures[f"{k}: media back after network up (s)"] is not None for k in watched)
                and carl_sends == sends
                and signaling_back is not None
                and figures["Sue <- Alice: longest gap (s)"] < 2.0
                and figures["full reconnects"] == {n: 0 for n in pages}
                and figures["Sue: Carl listed throughout the drop"]
            )
            here.close()
            there.close()
            return 0 if ok else 1
    finally:
        server.stop()
        holder.kill()


if __name__ == "__main__":
    sys.exit(main())
