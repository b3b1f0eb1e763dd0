/**
 * One socket and everything that lives exactly as long as it: the server's
 * hello, the requests in flight, the local mirrors of the server's rate
 * buckets, per-socket timers, and the primitives that put frames on it. The
 * lowest layer of the client: connection, resume, pump and dispatch all use
 * it, and it uses none of them.
 */
import type { ClientFrame, ServerHello } from "./generated/protocol.js";
import type { Room } from "./room.js";
import { OPEN, type SocketLike } from "./transport.js";

export type RequestKind = "join" | "resume-join" | "sync" | "leave" | "read" | "auth" | "ping" | "out";

/** What a request id was for, so its answer (or error) finds its way back. */
export interface PendingRequest {
  kind: RequestKind;
  room?: string;
  clientMsgId?: string;
  rooms?: string[];
  resolve?: () => void;
}

export type LogLevel = "debug" | "info" | "warn" | "error";
export type Log = (level: LogLevel, msg: string, data?: unknown) => void;

/**
 * A token bucket like the server's (§8), slightly more conservative, with a
 * queue of frames waiting for a token.
 */
export class TokenBucket {
  tokens: number;
  #last = Date.now();
  readonly queue: Array<() => void> = [];
  timer: ReturnType<typeof setTimeout> | undefined;
  constructor(
    public capacity: number,
    public perSecond: number,
  ) {
    this.tokens = capacity;
  }
  /** Mirrors hello.limits, keeping a little headroom for clock skew. */
  configure(burst: number, perSecond: number): void {
    this.capacity = Math.max(1, burst - 2);
    this.perSecond = Math.max(0.5, perSecond * 0.9);
    this.tokens = Math.min(this.tokens, this.capacity);
  }
  #refill(): void {
    const now = Date.now();
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.#last) / 1000) * this.perSecond);
    this.#last = now;
  }
  take(): boolean {
    this.#refill();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
  /** Time until the next token. */
  waitMs(): number {
    this.#refill();
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) / this.perSecond) * 1000);
  }
}

/**
 * Request ids, counted per client rather than per socket: ids stay unique in
 * the logs across reconnects.
 */
export class Ids {
  #n = 0;
  next(prefix: string): string {
    return `${prefix}${++this.#n}`;
  }
}

/** One socket and everything that lives exactly as long as it. */
export class Connection {
  /**
   * This is the client's current socket. Cleared (for good) when the socket
   * is lost or the client closes: every callback of a socket checks it, so
   * a late event of an old socket changes nothing.
   */
  live = true;
  hello: ServerHello | undefined;
  /** All rooms of the resume answered (then the outbox is pumped). */
  resumed = false;
  resumeOutstanding = 0;
  readonly requests = new Map<string, PendingRequest>();
  /** Local mirror of the server's events bucket (set from hello.limits). */
  readonly bucket = new TokenBucket(100, 50);
  /**
   * Local mirror of the server's send bucket (send, edit and delete; set
   * from hello.limits): the outbox is paced by it, so a burst of queued
   * entries is not refused one in two after the server's burst is spent.
   */
  readonly sendBucket = new TokenBucket(Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
  /** The tracked `read` request per room (reads get no reply on success). */
  readonly readIds = new Map<string, string>();
  handshakeStatus: number | undefined;
  readonly timers = new Set<ReturnType<typeof setTimeout>>();
  livenessTimer: ReturnType<typeof setTimeout> | undefined;
  livenessMs = 0;
  pingInterval: ReturnType<typeof setInterval> | undefined;
  /** Credential expiry on the local clock (from *_expires_in_ms). */
  expiresAtLocal = 0;
  openedAt = Date.now();
  constructor(
    readonly socket: SocketLike,
    readonly url: string,
    readonly ids: Ids,
    readonly log: Log,
  ) {}

  dispose(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.livenessTimer) clearTimeout(this.livenessTimer);
    if (this.pingInterval) clearInterval(this.pingInterval);
    this.livenessTimer = undefined;
    this.pingInterval = undefined;
  }

  /** Runs `fn` after `ms` if this is still the current socket then. */
  timer(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (this.live) fn();
    }, ms);
    this.timers.add(t);
  }

  /** The hello's feature list (empty before hello). */
  features(): readonly string[] {
    return (this.hello as Partial<ServerHello> | undefined)?.features ?? [];
  }

  /** 1.1 fields (epoch) only to a server that announced a protocol_version, 1.1 or later (§19.3). */
  is11(): boolean {
    return (this.hello as Partial<ServerHello> | undefined)?.protocol_version !== undefined;
  }

  /** Writes one frame; false when the socket is gone or refuses it. */
  send(frame: ClientFrame): boolean {
    if (!this.live || this.socket.readyState !== OPEN) return false;
    try {
      this.socket.send(JSON.stringify(frame));
      return true;
    } catch (err) {
      this.log("warn", "send failed", err);
      return false;
    }
  }

  /**
   * Sends a request frame of the events bucket (everything but send/edit/
   * delete) with a fresh id and remembers what it was for. Paced by a local
   * mirror of the server's bucket (§8): many joins at once would otherwise be
   * refused, and 50 refusals in a row close the socket (4008). Returns false
   * when the socket is gone.
   */
  request(frame: ClientFrame, req: PendingRequest): boolean {
    if (!this.live || this.socket.readyState !== OPEN) return false;
    const go = () => {
      const id = this.ids.next("r");
      if (this.send({ ...frame, id } as ClientFrame)) this.requests.set(id, req);
      else req.resolve?.();
    };
    this.#paced(go);
    return true;
  }

  /**
   * Sends the room's pending read marker. A read has no reply on success
   * (the broadcast carries no id): one tracked id per room lets errors be
   * matched without leaking ids.
   */
  sendRead(room: Room): void {
    if (room.pendingRead === undefined) return;
    const send = () => {
      if (room.pendingRead === undefined) return;
      const old = this.readIds.get(room.id);
      if (old !== undefined) this.requests.delete(old);
      const id = this.ids.next("r");
      if (this.send({ type: "read", id, room: room.id, seq: room.pendingRead })) {
        this.requests.set(id, { kind: "read", room: room.id });
        this.readIds.set(room.id, id);
      }
    };
    this.#paced(send);
  }

  /**
   * Sends `typing` for a room. Not tracked: typing has no success reply, so a
   * tracked id would stay forever; an error for it (rate_limited,
   * not_joined) is emitted as is. Ephemeral: dropped rather than queued when
   * the events bucket is empty.
   */
  sendTyping(roomId: string): void {
    if (this.bucket.queue.length === 0 && this.bucket.take()) {
      this.send({ type: "typing", id: this.ids.next("t"), room: roomId });
    }
  }

  /** Forgets and returns the request an answer's id belongs to. */
  takeRequest(id: string | number | undefined): PendingRequest | undefined {
    if (id === undefined) return undefined;
    const key = String(id);
    const req = this.requests.get(key);
    this.requests.delete(key);
    return req;
  }

  /** Runs `go` now if the events bucket has a token and nothing waits, else queues it. */
  #paced(go: () => void): void {
    if (this.bucket.queue.length === 0 && this.bucket.take()) go();
    else {
      this.bucket.queue.push(go);
      this.#drainEvents();
    }
  }

  #drainEvents(): void {
    const b = this.bucket;
    if (b.timer || b.queue.length === 0) return;
    const wait = b.waitMs();
    const t = setTimeout(() => {
      this.timers.delete(t);
      b.timer = undefined;
      if (!this.live) return;
      while (b.queue.length > 0 && b.take()) b.queue.shift()!();
      this.#drainEvents();
    }, wait);
    b.timer = t;
    this.timers.add(t);
  }
}

/**
 * Whether a server (by its hello) serves `edit` or `delete` (§16, §19):
 * `edit` while "edits" is listed (1.2 lists it only while the edit window is
 * open); `delete` where "deletes" is listed (1.2, also with edits off), or
 * where "edits" is listed by a 1.0/1.1 server, which had no "deletes".
 */
export function serves(hello: ServerHello | undefined, kind: "edit" | "delete"): boolean {
  const h = hello as Partial<ServerHello> | undefined;
  const features: readonly string[] = h?.features ?? [];
  if (kind === "edit") return features.includes("edits");
  if (features.includes("deletes")) return true;
  const version: string | undefined = h?.protocol_version;
  const before12 = version === undefined || version === "1.0" || version === "1.1";
  return before12 && features.includes("edits");
}

/** UTF-8 byte length, without TextEncoder (missing on some React Native engines). */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}
