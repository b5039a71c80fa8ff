import type { CreatedSession, History, RefreshedToken } from "./protocol";

/** An HTTP API call failed; `status` is 0 when the request did not reach the edge. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** The edge's small HTTP API beside the socket (docs/protocol.md). */
export interface RelayApi {
  createSession(options?: { title?: string; bearer?: string }): Promise<CreatedSession>;
  refreshToken(token: string): Promise<RefreshedToken>;
  getMessages(sessionId: string, token: string): Promise<History>;
}

/** The API over `fetch`, at `baseUrl` (same origin by default). */
export class HttpRelayApi implements RelayApi {
  constructor(
    private readonly baseUrl = "",
    private readonly fetcher: typeof fetch = (...args) => globalThis.fetch(...args),
  ) {}

  createSession(options: { title?: string; bearer?: string } = {}): Promise<CreatedSession> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (options.bearer) headers.authorization = `Bearer ${options.bearer}`;
    const body = options.title ? { title: options.title } : {};
    return this.call<CreatedSession>("/api/sessions", { method: "POST", headers, body: JSON.stringify(body) });
  }

  refreshToken(token: string): Promise<RefreshedToken> {
    return this.call<RefreshedToken>("/api/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token }),
    });
  }

  async getMessages(sessionId: string, token: string): Promise<History> {
    const history = await this.call<History>(`/api/sessions/${encodeURIComponent(sessionId)}/messages`, {
      headers: { authorization: `Bearer ${token}` },
    });
    return {
      messages: history.messages ?? [],
      as_of_seq: Number(history.as_of_seq) || 0,
      ...(history.active_run_id ? { active_run_id: history.active_run_id } : {}),
    };
  }

  private async call<T>(path: string, init: RequestInit): Promise<T> {
    let response: Response;
    try {
      response = await this.fetcher(`${this.baseUrl}${path}`, init);
    } catch (error) {
      throw new ApiError(`${path}: ${String(error)}`, 0);
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = (await response.json()) as { message?: string; error?: string };
        detail = body.message ?? body.error ?? detail;
      } catch {
        // Not JSON: keep the status text.
      }
      throw new ApiError(`${path}: ${response.status} ${detail}`, response.status);
    }
    return (await response.json()) as T;
  }
}
