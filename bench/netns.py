"""A network namespace of the side-by-side run's own, where Janus can gather a loopback
candidate.

Janus skips every interface flagged LOOPBACK when it gathers ICE candidates (src/ice.c,
``janus_ice_setup_local``), so on ``lo`` alone it has none and refuses every offer ("Error
setting ICE locally"). The run therefore re-executes itself in a new network namespace
(``unshare --net``, as root) holding ``lo`` and a veth pair whose one end carries
:data:`JANUS_ADDRESS`, a loopback-range address: Janus gathers on that end (``ice_enforce_list``),
and the kernel delivers traffic to it through ``lo`` like any local address. Nothing leaves the
namespace: it has no other interface and no route.

libnice sends each packet through the interface of its candidate's address, and the kernel
refuses (EINVAL) a loopback source on a non-loopback interface unless the destination is an
address of that interface too; so the clients of the run gather on :data:`JANUS_ADDRESS` as
well (bench/worker.py ``use_host``), for every server and the direct floor alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

JANUS_ADDRESS = "127.0.0.2"
JANUS_INTERFACE = "parleyj0"
PEER_INTERFACE = "parleyj1"
MARKER = "PARLEY_SIDEBYSIDE_NETNS"
"""Set in the re-executed run (the namespace is ready)."""


class NamespaceError(RuntimeError):
    """The run could not get a namespace of its own (not root, no unshare or ip)."""


def inside() -> bool:
    return os.environ.get(MARKER) == "1"


def reexec() -> int:
    """Run this very command line again in a new network namespace; its exit code."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise NamespaceError("unshare (util-linux) is missing")
    env = {**os.environ, MARKER: "1"}
    try:
        return subprocess.run([unshare, "--net", "--", *sys.orig_argv], env=env).returncode
    except OSError as exc:
        raise NamespaceError(f"unshare --net failed: {exc}") from exc


def set_up() -> None:
    """Bring ``lo`` up and add the veth pair with :data:`JANUS_ADDRESS` (in the namespace)."""
    ip = shutil.which("ip")
    if ip is None:
        raise NamespaceError("ip (iproute2) is missing")
    commands = [
        ["link", "set", "lo", "up"],
        ["link", "add", JANUS_INTERFACE, "type", "veth", "peer", "name", PEER_INTERFACE],
        ["link", "set", JANUS_INTERFACE, "addrgenmode", "none"],  # no IPv6 link-local chatter
        ["link", "set", PEER_INTERFACE, "addrgenmode", "none"],
        ["addr", "add", f"{JANUS_ADDRESS}/32", "dev", JANUS_INTERFACE],
        ["link", "set", PEER_INTERFACE, "up"],
        ["link", "set", JANUS_INTERFACE, "up"],  # RUNNING once both ends are up
    ]
    for args in commands:
        done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise NamespaceError(f"ip {' '.join(args)}: {done.stderr.strip()}")
