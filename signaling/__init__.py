"""parley's control plane: HTTP API, WebSocket signaling, join tokens, the browser client."""
