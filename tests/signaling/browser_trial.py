"""The README's "two tabs" trial, as an ordinary Chromium sees it: no loopback flag, a host with a
non-loopback interface, `parley serve` with its defaults (media on 127.0.0.1).

Run by tests/signaling/test_browser_trial.py inside a network namespace of its own that has a
veth pair (10.200.0.1 and .2, the test's own hosts); prints MEDIA OK and the nominated pairs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from playwright import sync_api  # noqa: E402

from tests.signaling.browser_support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    participant_id,
    running_server,
    wait_for_media,
    wait_for_state,
)

PAIRS_JS = """async () => {
  const report = await window.parley.pcs.subscribe.getStats();
  const byId = {};
  report.forEach(s => byId[s.id] = s);
  const pairs = [];
  report.forEach(s => {
    if (s.type === 'candidate-pair' && s.state === 'succeeded') {
      pairs.push([byId[s.localCandidateId].candidateType, byId[s.localCandidateId].address,
                  byId[s.remoteCandidateId].candidateType, byId[s.remoteCandidateId].address]);
    }
  });
  return pairs;
}"""


def main() -> int:
    args = [a for a in CHROMIUM_ARGS if a != "--allow-loopback-in-peer-connection"]
    with running_server() as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        session = server.create_session("readme-trial")
        pages = []
        for url, name in ((session["agent_url"], "Ann"), (session["customer_url"], "Carl")):
            context = browser.new_context(permissions=["camera", "microphone"])
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(url)
            page.get_by_label("Your name").fill(name)
            page.get_by_role("button", name="Join", exact=True).click()
            wait_for_state(page, "connected")
            pages.append(page)
        agent, customer = pages
        wait_for_media(agent, {participant_id(customer): ("camera", "microphone")}, timeout=30)
        wait_for_media(customer, {participant_id(agent): ("camera", "microphone")}, timeout=30)
        print("MEDIA OK")
        print(json.dumps(agent.evaluate(PAIRS_JS)))
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
