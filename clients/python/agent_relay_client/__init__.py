"""Python clients for agent-relay.

- `agent_relay_client.ws.EdgeClient`: an asyncio client for the WebSocket edge with the
  browser client's guarantees (reconnect with jittered backoff, outbox, resume by `seq`,
  dedup, assembly of streamed deltas, cancel).
- `agent_relay_client.grpc.AgentClient`: a thin async client of the gRPC service for
  backend code.
- `agent_relay_client.cli`: the terminal chat (`agent-relay chat`, `tools`, `history`).

The deciding logic lives in pure modules (`backoff`, `connection`, `outbox`,
`conversation`, `events`) that do no I/O; `errors` draws the exception tree.
"""
