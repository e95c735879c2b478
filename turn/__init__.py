"""parley's TURN/STUN server (RFC 8656 / RFC 5766 on RFC 8489); see docs/turn.md.

Sans-I/O core: :mod:`turn.stun` (codec), :mod:`turn.allocation`, :mod:`turn.handler`,
:mod:`turn.credentials` (``rest_credentials``), :mod:`turn.policy`; asyncio shell:
:mod:`turn.server` (``TurnServer``); configuration: :mod:`turn.config` (``TurnConfig``);
command line: :mod:`turn.cli` and ``python -m parley.turn``. Nothing is imported here so that the core
modules can be used without pulling in asyncio.
"""
