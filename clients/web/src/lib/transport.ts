import { PROTOCOL } from "./codes";

/** What a transport reports. Called at most once each for open and close. */
export interface TransportCallbacks {
  onOpen(): void;
  /** A text frame (string) or a binary one (bytes). */
  onMessage(data: string | ArrayBuffer): void;
  /** The socket closed (or never opened): 1006 when no close frame arrived. */
  onClose(code: number, reason: string): void;
}

/**
 * One socket's worth of I/O, and nothing else: the service decides, the
 * transport carries frames. A transport is used for one connection attempt.
 */
export interface Transport {
  /** Start connecting; report through `callbacks`. Called once. */
  open(callbacks: TransportCallbacks): void;
  /** Send one frame: text (string) or binary (bytes). */
  send(data: string | Uint8Array): void;
  /** Close; no callback fires afterwards. */
  close(code: number, reason: string): void;
}

/**
 * Makes a fresh transport for each connection attempt; `protocol` is the
 * subprotocol to offer (the service's wire format, src/lib/codec.ts).
 */
export type TransportFactory = (url: string, protocol: string) => Transport;

/** The browser's `WebSocket`, offering one subprotocol (`agent-relay.v1` by default). */
export class BrowserWebSocketTransport implements Transport {
  private socket: WebSocket | undefined;
  private callbacks: TransportCallbacks | undefined;

  constructor(
    private readonly url: string,
    private readonly protocol: string = PROTOCOL,
  ) {}

  open(callbacks: TransportCallbacks): void {
    this.callbacks = callbacks;
    let socket: WebSocket;
    try {
      socket = new WebSocket(this.url, [this.protocol]);
    } catch {
      // A malformed URL throws synchronously; report it the way a failed handshake is.
      queueMicrotask(() => this.callbacks?.onClose(1006, "could not open the socket"));
      return;
    }
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => this.callbacks?.onOpen();
    socket.onmessage = (event: MessageEvent) => {
      const data: unknown = event.data;
      if (typeof data === "string" || data instanceof ArrayBuffer) this.callbacks?.onMessage(data);
    };
    socket.onclose = (event: CloseEvent) => {
      const callbacks = this.callbacks;
      this.detach();
      callbacks?.onClose(event.code, event.reason);
    };
  }

  send(data: string | Uint8Array): void {
    // (a Uint8Array of protobuf-es is over a plain ArrayBuffer, never a shared one)
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(data as string | Uint8Array<ArrayBuffer>);
  }

  close(code: number, reason: string): void {
    const socket = this.socket;
    this.detach();
    if (socket && socket.readyState < WebSocket.CLOSING) {
      try {
        socket.close(code, reason);
      } catch {
        socket.close();
      }
    }
  }

  private detach(): void {
    this.callbacks = undefined;
    if (this.socket) {
      this.socket.onopen = null;
      this.socket.onmessage = null;
      this.socket.onclose = null;
    }
  }
}

export const browserTransport: TransportFactory = (url, protocol) => new BrowserWebSocketTransport(url, protocol);
