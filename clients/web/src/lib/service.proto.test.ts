/**
 * Every test of service.test.ts again, on the `agent-relay.v1+proto` wire: the
 * fake edge (testing.ts's FakeSocket) speaks protobuf, the service must behave
 * exactly as it does on JSON.
 */
(globalThis as { __AGENT_RELAY_TEST_WIRE__?: string }).__AGENT_RELAY_TEST_WIRE__ = "proto";
await import("./service.test");

export {};
