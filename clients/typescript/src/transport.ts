/**
 * Opening the socket. Two platforms differ here and nowhere else:
 * - Node's `ws` takes an options object with headers (so the access token
 *   goes in `Authorization`, §2.1) and exposes WebSocket ping frames;
 * - browsers (and other WHATWG-style implementations) can set neither, so
 *   they authenticate with a single-use ticket in the query string (§2.2)
 *   and use app-level heartbeats (§9) to detect dead sockets.
 */

/** The subset of a WebSocket the SDK uses (browser WebSocket and `ws` both fit). */
export interface SocketLike {
  readonly readyState: number;
  readonly protocol?: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor: `globalThis.WebSocket`, `ws`'s WebSocket, or a test fake. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[], options?: never) => SocketLike;

/** Node `ws` extras the SDK uses when present. */
interface NodeWsExtras {
  on(event: "ping", listener: () => void): unknown;
  terminate(): void;
}

export const SUBPROTOCOL = "chatgw.v1";
export const OPEN = 1;

/**
 * True for constructors that accept `{headers}` and emit "ping" events (the
 * `ws` package). Detected by shape, because `ws` cannot be imported here
 * (no runtime dependencies) and bundlers may rename classes.
 */
export function isNodeWs(ctor: unknown): boolean {
  const proto = (ctor as { prototype?: Record<string, unknown> } | undefined)?.prototype;
  return !!proto && typeof proto["ping"] === "function" && typeof proto["on"] === "function";
}

export interface OpenOptions {
  url: string;
  WebSocket: WebSocketConstructor;
  /** Access token for the Authorization header (needs a `ws`-like constructor). */
  token?: string;
  /** Single-use ticket, put in the query string. */
  ticket?: string;
  /** Ask for app-level heartbeats (`?heartbeat=app`). */
  appHeartbeat: boolean;
}

/** Builds the /ws URL with the ticket and heartbeat parameters (§2.2, §2.6). */
export function buildUrl(base: string, ticket: string | undefined, appHeartbeat: boolean): string {
  // Plain string work rather than URL.searchParams: React Native's URL does
  // not implement searchParams.set.
  // The server refuses a repeated `ticket` or `heartbeat` with 400
  // (protocol §2.6), so the ones the SDK sets replace any that the app's
  // base URL already carries; other parameters are kept as they are.
  const hashAt = base.indexOf("#");
  const withoutHash = hashAt >= 0 ? base.slice(0, hashAt) : base;
  const queryAt = withoutHash.indexOf("?");
  const path = queryAt >= 0 ? withoutHash.slice(0, queryAt) : withoutHash;
  const ours = (p: string) => (ticket !== undefined && /^ticket(=|$)/.test(p)) || (appHeartbeat && /^heartbeat(=|$)/.test(p));
  const params = queryAt >= 0 ? withoutHash.slice(queryAt + 1).split("&").filter((p) => p !== "" && !ours(p)) : [];
  if (ticket !== undefined) params.push(`ticket=${encodeURIComponent(ticket)}`);
  if (appHeartbeat) params.push("heartbeat=app");
  return params.length === 0 ? path : `${path}?${params.join("&")}`;
}

export function openSocket(o: OpenOptions): SocketLike {
  const url = buildUrl(o.url, o.ticket, o.appHeartbeat);
  if (o.token !== undefined && o.ticket === undefined) {
    const Ctor = o.WebSocket as unknown as new (url: string, protocols: string[], options: object) => SocketLike;
    return new Ctor(url, [SUBPROTOCOL], { headers: { Authorization: `Bearer ${o.token}` } });
  }
  return new o.WebSocket(url, [SUBPROTOCOL]);
}

/** Subscribes to WebSocket ping frames where the implementation exposes them. */
export function onWsPing(socket: SocketLike, listener: () => void): boolean {
  const s = socket as unknown as Partial<NodeWsExtras>;
  if (typeof s.on === "function" && typeof s.terminate === "function") {
    s.on("ping", listener);
    return true;
  }
  return false;
}

/**
 * Drops a socket at once. `ws`'s close() waits up to 30 s for the peer's
 * close frame, which a frozen or vanished server never sends; terminate()
 * does not wait.
 */
export function killSocket(socket: SocketLike, code = 4000, reason = "client abort"): void {
  const s = socket as unknown as Partial<NodeWsExtras>;
  try {
    if (typeof s.terminate === "function") s.terminate();
    else socket.close(code, reason);
  } catch {
    // already closed
  }
}

/**
 * The HTTP status of a refused handshake, when the implementation tells it
 * (`ws`: error "Unexpected server response: 401"). Browsers never do (§2.4).
 */
export function handshakeStatus(ev: unknown): number | undefined {
  const e = ev as { message?: unknown; error?: { message?: unknown } } | undefined;
  const msg = typeof e?.message === "string" ? e.message : typeof e?.error?.message === "string" ? e.error.message : "";
  const m = /Unexpected server response: (\d{3})/.exec(msg);
  return m ? Number(m[1]) : undefined;
}

/** RFC 4122 v4 id for client_msg_id; crypto.randomUUID is missing outside secure contexts. */
export function uuid(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
