/**
 * The protobuf codec against frames the edge itself encoded
 * (clients/spec/wire/frames.json, written by tests/support/wire_frames.py from
 * ws_edge's encoders): each binary frame must decode to exactly what its JSON
 * twin decodes to, and each client frame must encode to the message the
 * Python client's codec writes.
 */
import { equals, fromBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";

import { FrameSchema } from "../gen/agent_relay/v1/edge_pb";
import recorded from "../../../spec/wire/frames.json";
import { PROTO_PROTOCOL, encodedBytes, jsonCodec, loadCodec, wireFromQuery } from "./codec";
import { protoCodec } from "./protoCodec";
import type { ClientFrame } from "./protocol";

function bytesOf(base64: string): Uint8Array {
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

describe("proto codec", () => {
  it.each(recorded.server.map((f) => [f.name, f] as const))("decodes %s as its JSON twin does", (_name, frame) => {
    const fromJson = jsonCodec.decode(frame.json);
    expect(fromJson).toBeDefined();
    expect(protoCodec.decode(bytesOf(frame.proto))).toEqual(fromJson);
    // an ArrayBuffer, as the browser's WebSocket hands it over with binaryType "arraybuffer"
    const copy = bytesOf(frame.proto);
    expect(protoCodec.decode(copy.buffer.slice(0) as ArrayBuffer)).toEqual(fromJson);
  });

  it.each(recorded.client.map((c) => [c.frame.type, c] as const))("encodes %s as the Python client does", (_type, c) => {
    const mine = protoCodec.encode(c.frame as ClientFrame);
    expect(mine).toBeInstanceOf(Uint8Array);
    const theirs = fromBinary(FrameSchema, bytesOf(c.proto));
    expect(equals(FrameSchema, fromBinary(FrameSchema, mine as Uint8Array), theirs)).toBe(true);
  });

  it("reads nothing it cannot: garbage, text, client frames and events without a seq", () => {
    expect(protoCodec.decode(new Uint8Array([0xff, 0xff, 0xff]))).toBeUndefined();
    expect(protoCodec.decode('{"type":"pong"}')).toBeUndefined();
    expect(jsonCodec.decode(new Uint8Array([1]))).toBeUndefined();
    const clientKind = recorded.client[0];
    expect(clientKind && protoCodec.decode(bytesOf(clientKind.proto))).toBeUndefined();
    expect(protoCodec.decode(new Uint8Array())).toBeUndefined(); // a Frame with no kind
  });

  it("offers the subprotocol of its wire and measures what it writes", async () => {
    expect((await loadCodec("proto")).protocol).toBe(PROTO_PROTOCOL);
    expect(await loadCodec("proto")).toBe(protoCodec);
    expect(await loadCodec("json")).toBe(jsonCodec);
    expect(wireFromQuery("?wire=proto")).toBe("proto");
    expect(wireFromQuery("?x=1&wire=json")).toBe("json");
    expect(wireFromQuery("?wire=xml")).toBeUndefined();
    expect(encodedBytes("☃")).toBe(3);
    expect(encodedBytes(new Uint8Array(7))).toBe(7);
  });
});
