"""Benchmarks: ``parley bench`` (the load tool) and the micro-benchmarks (``test_micro.py``).

The load tool, by concern (each imports only those listed before it, plus ``procstat``):

- ``options``: the ``parley bench`` flags (``signaling.cli`` adds them only for ``parley bench``).
- ``results``: ``Measurement``, ``Point``, percentiles and timelines, reading a results file.
- ``workers``: the orchestrator's side of the worker RPC (``WorkerProc``, ``worker_pair``,
  ``bounded``); the worker processes themselves are ``worker`` (``synthetic``, ``clip``).
- ``service``: the relay under test (``relay_service``), HTTP helpers, ``create_session``.
- ``signaling_client``: the one client of parley's WebSocket signaling API, also used by the
  tests (``tests/signaling/ws_client.py`` adds aiortc media to it).
- ``measure``: a measurement window, the relay and direct modes, one point.
- ``capacity``: the capacity search. ``output``: table, plot, JSON. ``main``: the run.
- ``baseline``: the aiortc ``MediaRelay`` baseline (``mediarelay``), from the public names above.
"""
