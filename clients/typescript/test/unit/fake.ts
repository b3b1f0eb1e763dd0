/**
 * A fake WebSocket for unit tests of the client state machine: the test plays
 * the server (sends frames, closes with codes) and inspects what the client
 * sent. Real-gateway behaviour is covered by test/e2e.
 */
import type { ServerHello } from "../../src/index.ts";

export interface SentFrame {
  type: string;
  id?: string | number;
  [k: string]: unknown;
}

export class FakeSocket {
  readyState = 0;
  protocol = "chatgw.v1";
  readonly sent: SentFrame[] = [];
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  readonly pingListeners: Array<() => void> = [];
  closedByClient: { code?: number; reason?: string } | undefined;
  terminated = false;
  #waiters: Array<() => void> = [];

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
    readonly options?: { headers?: Record<string, string> },
  ) {}

  // --- client side (what the SDK calls)
  send(data: string): void {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(JSON.parse(data) as SentFrame);
    for (const w of this.#waiters.splice(0)) w();
  }
  close(code?: number, reason?: string): void {
    this.closedByClient = { ...(code !== undefined ? { code } : {}), ...(reason !== undefined ? { reason } : {}) };
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code: code ?? 1005, reason: reason ?? "" }), 0);
  }

  // --- server side (what the test calls)
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  push(frame: object): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** A refused handshake as `ws` reports it. */
  refuse(status: number): void {
    this.readyState = 3;
    this.onerror?.({ message: `Unexpected server response: ${status}` });
    this.onclose?.({ code: 1006, reason: "" });
  }
  /** Waits for a sent frame matching `pred` (searching from index `from`). */
  async waitSent(pred: (f: SentFrame) => boolean, timeoutMs = 5000, from = 0): Promise<SentFrame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = this.sent.slice(from).find(pred);
      if (f) return f;
      if (Date.now() > deadline) throw new Error(`timeout waiting for a sent frame; sent: ${JSON.stringify(this.sent)}`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 20);
      });
    }
  }
  sentOf(type: string): SentFrame[] {
    return this.sent.filter((f) => f.type === type);
  }
}

/** `ws`-like: has ping/on/terminate on the prototype, so the SDK sends headers. */
export class FakeNodeSocket extends FakeSocket {
  ping(): void {}
  on(event: string, fn: () => void): this {
    if (event === "ping") this.pingListeners.push(fn);
    return this;
  }
  terminate(): void {
    this.terminated = true;
    this.readyState = 3;
  }
}

/** A registry of sockets the SDK opened, with the constructor to pass in. */
export function fakeServer(kind: "node" | "browser" = "node") {
  const sockets: FakeSocket[] = [];
  const waiters: Array<() => void> = [];
  const Base = kind === "node" ? FakeNodeSocket : FakeSocket;
  class WS extends Base {
    constructor(url: string, protocols?: string | string[], options?: { headers?: Record<string, string> }) {
      super(url, protocols, options);
      sockets.push(this);
      for (const w of waiters.splice(0)) w();
    }
  }
  return {
    WebSocket: WS,
    sockets,
    /** Waits for the n-th socket (0-based) to be opened by the SDK. */
    async socket(n: number, timeoutMs = 5000): Promise<FakeSocket> {
      const deadline = Date.now() + timeoutMs;
      while (sockets.length <= n) {
        if (Date.now() > deadline) throw new Error(`timeout waiting for socket #${n}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 20);
        });
      }
      return sockets[n]!;
    },
  };
}

export function hello(over: Partial<ServerHello> & Record<string, unknown> = {}): ServerHello {
  return {
    type: "hello",
    protocol: 1,
    protocol_version: "1.2",
    features: ["sync", "user_stream", "edits", "deletes", "retention", "app_heartbeat"],
    session_id: "sess-1",
    user_id: "u-me",
    heartbeat: "ws",
    heartbeat_ms: 25000,
    idle_timeout_ms: 60000,
    server_time: Date.now(),
    token_expires_at: Date.now() + 900000,
    token_expires_in_ms: 900000,
    limits: {
      max_frame_bytes: 65536,
      max_body_bytes: 4096,
      send_per_sec: 20,
      send_burst: 40,
      events_per_sec: 50,
      events_burst: 100,
      max_rooms: 1000,
      max_sync_rooms: 1000,
      edit_window_ms: 900000,
    },
    ...over,
  } as ServerHello;
}

/** A 1.1 server's hello: no "deletes" (edits listed with deletes served), no limits.edit_window_ms. */
export function hello11(over: Record<string, unknown> = {}): ServerHello {
  const h = hello({ protocol_version: "1.1", features: ["sync", "user_stream", "edits", "retention", "app_heartbeat"], ...over } as unknown as Partial<ServerHello>);
  const limits = { ...(h.limits as unknown as Record<string, unknown>) };
  delete limits.edit_window_ms;
  return { ...h, limits } as unknown as ServerHello;
}

/** A 1.0 server's hello: no protocol_version, features, heartbeat, server_time, token_expires_in_ms. */
export function hello10(over: Record<string, unknown> = {}): ServerHello {
  const h = hello(over) as unknown as Record<string, unknown>;
  delete h.protocol_version;
  delete h.features;
  delete h.heartbeat;
  delete h.server_time;
  delete h.token_expires_in_ms;
  const limits = { ...(h.limits as Record<string, unknown>) };
  delete limits.edit_window_ms;
  h.limits = limits;
  return h as unknown as ServerHello;
}

export function msg(room: string, seq: number, body = `m${seq}`, sender = "u-other", cmid = `c${seq}`) {
  return { type: "message", room, seq, sender, body, client_msg_id: cmid, sent_at: 1764000000000 + seq };
}

export function joined(room: string, last_seq: number, extra: Record<string, unknown> = {}) {
  return { type: "joined", room, last_seq, replayed: 0, online: ["u-me"], epoch: "ep1", read_seq: 0, ...extra };
}

export async function waitFor(cond: () => boolean, timeoutMs = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
