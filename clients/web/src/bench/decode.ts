/**
 * How long the browser client takes to turn a received frame into the object
 * its service dispatches, on each wire: `JSON.parse` plus the checks
 * (`jsonCodec.decode`) for a text frame, protobuf-es's `fromBinary` plus the
 * mapping and the same checks (`protoCodec.decode`) for a binary one. Above the
 * codec both wires run the same code, so this is all the difference there is.
 *
 * The frames are the edge's own (clients/spec/wire/frames.json). Rounds of the
 * two wires alternate; each round decodes the whole set until about 50 ms have
 * passed. bench/browser_decode.py builds this page (`vite build --mode bench`),
 * opens it in Chromium and prints `window.__decodeBench`.
 */
import recorded from "../../../spec/wire/frames.json";
import { jsonCodec } from "../lib/codec";
import { protoCodec } from "../lib/protoCodec";

interface Row {
  /** ns per frame, one per round */
  json: number[];
  proto: number[];
  jsonBytes: number;
  protoBytes: number;
  frames: number;
}

function bytesOf(base64: string): ArrayBuffer {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return bytes.buffer.slice(0) as ArrayBuffer;
}

let sink = 0; // read at the end, so no decode is optimised away

function round(decode: () => void, count: number): number {
  const start = performance.now();
  let n = 0;
  do {
    decode();
    n += 1;
  } while (performance.now() - start < 50);
  return ((performance.now() - start) * 1e6) / (n * count);
}

function measure(filter: (name: string) => boolean, rounds: number): Row {
  const chosen = recorded.server.filter((f) => filter(f.name));
  const texts = chosen.map((f) => f.json);
  const buffers = chosen.map((f) => bytesOf(f.proto));
  const decodeJson = () => {
    for (const t of texts) sink += jsonCodec.decode(t) ? 1 : 0;
  };
  const decodeProto = () => {
    for (const b of buffers) sink += protoCodec.decode(b) ? 1 : 0;
  };
  for (let i = 0; i < 3; i++) {
    round(decodeJson, texts.length); // warm-up: let the JIT settle both paths
    round(decodeProto, buffers.length);
  }
  const row: Row = {
    json: [], proto: [], frames: chosen.length,
    jsonBytes: texts.reduce((n, t) => n + new TextEncoder().encode(t).length, 0) / chosen.length,
    protoBytes: buffers.reduce((n, b) => n + b.byteLength, 0) / chosen.length,
  };
  for (let i = 0; i < rounds; i++) {
    row.json.push(round(decodeJson, texts.length));
    row.proto.push(round(decodeProto, buffers.length));
  }
  return row;
}

const rounds = Number(new URLSearchParams(location.search).get("rounds") ?? "15");
const result = {
  userAgent: navigator.userAgent,
  rounds,
  deltas: measure((name) => name.startsWith("delta batch"), rounds),
  events: measure((name) => !name.startsWith("delta batch") && !["welcome", "pong", "upstream"].includes(name) && !name.startsWith("ack") && !name.startsWith("error"), rounds),
  all: measure(() => true, rounds),
  sink,
};
(window as unknown as { __decodeBench: typeof result }).__decodeBench = result;
document.getElementById("status")!.textContent = "done";
