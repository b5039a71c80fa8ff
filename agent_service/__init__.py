"""The agent gRPC service: sessions, runs, the event log, model providers and tools."""
