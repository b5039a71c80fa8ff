import { PROTOCOL } from "./codes";

/** What a transport reports. Called at most once each for open and close. */
export interface TransportCallbacks {
  onOpen(): void;
  onMessage(data: string): void;
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
  /** Send one text frame. */
  send(data: string): void;
  /** Close; no callback fires afterwards. */
  close(code: number, reason: string): void;
}

/** Makes a fresh transport for each connection attempt. */
export type TransportFactory = (url: string) => Transport;

/** The browser's `WebSocket`, offering the `agent-relay.v1` subprotocol. */
export class BrowserWebSocketTransport implements Transport {
  private socket: WebSocket | undefined;
  private callbacks: TransportCallbacks | undefined;

  constructor(private readonly url: string) {}

  open(callbacks: TransportCallbacks): void {
    this.callbacks = callbacks;
    let socket: WebSocket;
    try {
      socket = new WebSocket(this.url, [PROTOCOL]);
    } catch {
      // A malformed URL throws synchronously; report it the way a failed handshake is.
      queueMicrotask(() => this.callbacks?.onClose(1006, "could not open the socket"));
      return;
    }
    this.socket = socket;
    socket.onopen = () => this.callbacks?.onOpen();
    socket.onmessage = (event: MessageEvent) => {
      if (typeof event.data === "string") this.callbacks?.onMessage(event.data);
    };
    socket.onclose = (event: CloseEvent) => {
      const callbacks = this.callbacks;
      this.detach();
      callbacks?.onClose(event.code, event.reason);
    };
  }

  send(data: string): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(data);
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

export const browserTransport: TransportFactory = (url) => new BrowserWebSocketTransport(url);
