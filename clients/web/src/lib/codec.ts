/**
 * The protocol's two wire formats, one codec each (docs/protocol.md):
 *
 * - `json`, subprotocol `agent-relay.v1`: text frames, one JSON object each
 *   (`jsonCodec`, here);
 * - `proto`, subprotocol `agent-relay.v1+proto`: binary frames, each one
 *   serialized `agent_relay.v1.Frame` (proto/agent_relay/v1/edge.proto), in
 *   protoCodec.ts, loaded only when asked for (`loadCodec("proto")`): the
 *   protobuf runtime and descriptors add about 26 kB gzip that a JSON page
 *   does not download.
 *
 * Both give the same `ServerFrame` objects (the JSON mapping) and take the same
 * `ClientFrame`s, so nothing above the codec (the service, the session core,
 * the conversation) knows which wire is in use.
 */
import { PROTOCOL } from "./codes";
import { type ClientFrame, type ServerFrame, parseServerFrame } from "./protocol";

export type Wire = "json" | "proto";

/** The wire the service uses unless told otherwise (see the measurement in docs/protocol.md). */
export const DEFAULT_WIRE: Wire = "json";

export const PROTO_PROTOCOL = `${PROTOCOL}+proto`;

/** What a socket's frames are made of: one codec per wire format. */
export interface FrameCodec {
  readonly wire: Wire;
  /** The subprotocol offered at the handshake. */
  readonly protocol: string;
  /** A text frame (string) or a binary one (bytes). */
  encode(frame: ClientFrame): string | Uint8Array;
  /** One received frame; undefined when it is unreadable or of the other wire. */
  decode(data: string | ArrayBuffer | Uint8Array): ServerFrame | undefined;
}

export const jsonCodec: FrameCodec = {
  wire: "json",
  protocol: PROTOCOL,
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => (typeof data === "string" ? parseServerFrame(data) : undefined),
};

/** The wire a page asks for in its query (`?wire=proto` or `?wire=json`), if any. */
export function wireFromQuery(search: string): Wire | undefined {
  const wire = new URLSearchParams(search).get("wire");
  return wire === "proto" || wire === "json" ? wire : undefined;
}

/** The codec of a wire; the proto one is fetched on first use (a separate chunk). */
export async function loadCodec(wire: Wire): Promise<FrameCodec> {
  if (wire === "json") return jsonCodec;
  const { protoCodec } = await import("./protoCodec");
  return protoCodec;
}

/** The size of an encoded frame on the wire, in bytes. */
export function encodedBytes(data: string | Uint8Array): number {
  return typeof data === "string" ? new TextEncoder().encode(data).length : data.byteLength;
}

