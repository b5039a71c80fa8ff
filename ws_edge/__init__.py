"""The WebSocket edge: browsers in, translated to the agent service's gRPC streams."""
