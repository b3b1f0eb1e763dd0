/**
 * ChatClient: the connection state machine of protocol §12. One socket at a
 * time; on every (re)connection it waits for `hello`, resumes every room the
 * app wants (bulk `sync` when the server has it, else one `join` each), then
 * re-sends the outbox in order. Every message reaches the app once, in seq
 * order, deduplicated by (room, seq), across reconnects and restarts.
 */
import { Backoff, type BackoffOptions, fullJitter } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ChatError } from "./errors.js";
import type {
  ClientFrame,
  ServerAck,
  ServerAuthOk,
  ServerDelete,
  ServerEdit,
  ServerError,
  ServerFrame,
  ServerFrameType,
  ServerHello,
  ServerHistoryGone,
  ServerJoined,
  ServerLeft,
  ServerMessage,
  ServerPresence,
  ServerRead,
  ServerReset,
  ServerRoomAdded,
  ServerRoomRemoved,
  ServerRoomSeq,
  ServerRoomUpdated,
  ServerSynced,
  ServerTyping,
} from "./generated/protocol.js";
import { Outbox, type OutboxEntry, type OutboxKind } from "./outbox.js";
import { decideOnClose, decideOnHandshake, renewalDelay, type Decision } from "./policy.js";
import { Room, type RemovedReason, type RoomHost, type RoomSnapshot } from "./room.js";
import { classify } from "./sequencer.js";
import { MemoryStore, type Store } from "./store.js";
import {
  handshakeStatus,
  isNodeWs,
  killSocket,
  onWsPing,
  OPEN,
  openSocket,
  type SocketLike,
  uuid,
  type WebSocketConstructor,
} from "./transport.js";

export type ClientState = "idle" | "connecting" | "online" | "reconnecting" | "closed";
export type HeartbeatMode = "app" | "ws" | "auto";
export type LogLevel = "debug" | "info" | "warn" | "error";

export interface StateInfo {
  /** Close code of the socket that ended (or an HTTP status for a refused handshake). */
  code?: number;
  reason?: string;
  /** Delay before the next attempt. */
  delayMs?: number;
  /**
   * With "closed" after a fatal refusal; with "reconnecting" when no socket
   * ended (the credential provider failed: code "provider_failed"; the
   * socket could not be created: code "network"). Every "reconnecting"
   * carries `code` or `error`.
   */
  error?: ChatError;
}

/**
 * A credential provider: may fetch over REST. The SDK calls a `token`
 * provider one call at a time per client (concurrent needs share the call in
 * flight); a `ticket` provider is called once per connection attempt.
 */
export type CredentialProvider = () => string | Promise<string>;

/** A gap in a room's stream that made the client re-join from `lastSeq` (§12.2 step 5). */
export interface GapInfo {
  room: string;
  /** The highest seq processed when the gap was seen. */
  lastSeq: number | undefined;
  /** The frame's seq beyond lastSeq + 1, or the `joined.last_seq` a replay fell short of. */
  seq: number;
}

export interface ChatClientOptions {
  /** Gateway URL(s) of GET /ws; several are tried in turn, rotating on each reconnect. */
  url: string | string[] | (() => string);
  /** Access-token provider: the Authorization header (Node `ws`) and renewal over the socket (`auth`). */
  token?: CredentialProvider;
  /** Ticket provider (§2.2): called for every attempt; the handshake then uses ?ticket=. */
  ticket?: CredentialProvider;
  /** WebSocket constructor; default globalThis.WebSocket. Pass `ws` on Node. */
  WebSocket?: unknown;
  /** Persistence of rooms' lastSeq/epoch/readSeq and the outbox; default a MemoryStore. */
  store?: Store;
  /** "auto": app heartbeats where pings are hidden (browsers), WebSocket pings with Node `ws`. */
  heartbeat?: HeartbeatMode;
  backoff?: BackoffOptions;
  onLog?: (level: LogLevel, msg: string, data?: unknown) => void;
  /** Give up on a connection attempt that has no `hello` after this long (default 15000). */
  connectTimeoutMs?: number;
  /** Random source (tests). */
  random?: () => number;
}

export type ClientEvents = {
  state: [ClientState, StateInfo | undefined];
  /** Errors not tied to one pending call: rate limits, refused typing, fatal closes. */
  error: [ChatError];
  hello: [ServerHello];
  room_added: [ServerRoomAdded];
  room_removed: [ServerRoomRemoved];
  room_updated: [ServerRoomUpdated];
  /** A room not joined on this socket has new messages (§15). */
  room_seq: [ServerRoomSeq];
  /** Entries in the outbox, after every change. */
  outbox: [number];
  /** A gap in a room's stream: the client re-joins the room from its lastSeq. */
  gap: [GapInfo];
};

/** The view of an outbox entry the app sees. */
export type PendingSend = Readonly<OutboxEntry>;

type RequestKind = "join" | "resume-join" | "sync" | "leave" | "read" | "auth" | "ping" | "out";
interface PendingRequest {
  kind: RequestKind;
  room?: string;
  clientMsgId?: string;
  rooms?: string[];
  resolve?: () => void;
}

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

/** One socket and everything that lives exactly as long as it. */
class Connection {
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
  ) {}
  dispose(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.livenessTimer) clearTimeout(this.livenessTimer);
    if (this.pingInterval) clearInterval(this.pingInterval);
    this.livenessTimer = undefined;
    this.pingInterval = undefined;
  }
}

interface Deferred<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
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

const STORE_USER_KEY = "user";
const stateKey = (userId: string) => `state:${userId}`;
interface PersistedState {
  v: 1;
  rooms: Record<string, RoomSnapshot>;
  outbox: OutboxEntry[];
}

export interface SyncEntry {
  room: string;
  since_seq?: number;
  epoch?: string;
}

/**
 * Splits a resume into `sync` frames of at most `maxRooms` entries and at
 * most `maxFrameBytes` bytes (a bigger frame would be closed with 1009, and
 * then again on every reconnect). Order is kept.
 */
export function chunkSync(entries: SyncEntry[], maxRooms: number, maxFrameBytes: number): SyncEntry[][] {
  // Room for {"type":"sync","id":"r123456789","rooms":[]} and some slack.
  const budget = Math.max(256, maxFrameBytes - 96);
  const chunks: SyncEntry[][] = [];
  let current: SyncEntry[] = [];
  let bytes = 0;
  for (const e of entries) {
    const size = utf8Length(JSON.stringify(e)) + 1;
    if (current.length > 0 && (current.length >= Math.max(1, maxRooms) || bytes + size > budget)) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(e);
    bytes += size;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

/**
 * Stops listening to a socket we are done with. onerror stays a no-op: `ws`
 * emits "error" when a handshake in progress is aborted, and an "error"
 * without listener would crash the process.
 */
function detach(socket: SocketLike): void {
  socket.onclose = null;
  socket.onmessage = null;
  socket.onopen = null;
  socket.onerror = () => {};
}

/**
 * Whether a server (by its hello) serves `edit` or `delete` (§16, §19):
 * `edit` while "edits" is listed (1.2 lists it only while the edit window is
 * open); `delete` where "deletes" is listed (1.2, also with edits off), or
 * where "edits" is listed by a 1.0/1.1 server, which had no "deletes".
 */
function serves(hello: ServerHello | undefined, kind: "edit" | "delete"): boolean {
  const h = hello as Partial<ServerHello> | undefined;
  const features: readonly string[] = h?.features ?? [];
  if (kind === "edit") return features.includes("edits");
  if (features.includes("deletes")) return true;
  const version: string | undefined = h?.protocol_version;
  const before12 = version === undefined || version === "1.0" || version === "1.1";
  return before12 && features.includes("edits");
}

/**
 * Errors after which a send/edit/delete is refused for good (§6). Only
 * `forbidden` also drops the room (not a member); `not_author` (an edit or
 * delete of someone else's message) concerns that request alone.
 */
const DEFINITIVE_SEND_ERRORS = new Set([
  "bad_request",
  "forbidden",
  "not_found",
  "too_large",
  "conflict",
  "edit_window_closed",
  "not_author",
]);
/** Errors after which a room cannot be joined (it is dropped from the resume set). */
const DEFINITIVE_JOIN_ERRORS = new Set(["forbidden", "not_found", "limit_exceeded", "bad_request"]);
/** Requests in flight at once from the outbox; 1 after a rate limit, to keep order. */
const OUTBOX_WINDOW = 16;
const TYPING_THROTTLE_MS = 2_000;
/** A connection that lived this long resets the backoff (§7 "stayed up for a while"). */
const STABLE_AFTER_MS = 5_000;
/** Consecutive refused credentials (401 / 4001 right away) before giving up. */
const MAX_AUTH_FAILURES = 3;
/** A resume not fully answered by then no longer holds the outbox back. */
const RESUME_WATCHDOG_MS = 30_000;

export class ChatClient extends Emitter<ClientEvents> implements RoomHost {
  #state: ClientState = "idle";
  #userId: string | undefined;
  #hello: ServerHello | undefined;
  #conn: Connection | undefined;
  readonly #rooms = new Map<string, Room>();
  readonly #outbox = new Outbox();
  readonly #sendWaiters = new Map<string, Array<Deferred<ServerAck>>>();
  readonly #store: Store;
  readonly #backoff: Backoff;
  readonly #random: () => number;
  readonly #WebSocket: WebSocketConstructor | undefined;
  readonly #nodeWs: boolean;
  #urlIndex = 0;
  #reqCounter = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #pumpTimer: ReturnType<typeof setTimeout> | undefined;
  #pausedUntil = 0;
  #careful = false;
  #authFailures = 0;
  #restored: Promise<void> | undefined;
  #connectWaiters: Array<Deferred<void>> = [];
  #saveChain: Promise<void> = Promise.resolve();
  #saveScheduled = false;
  #tokenInFlight: Promise<string> | undefined;
  #gapRecoveries = 0;

  constructor(readonly options: ChatClientOptions) {
    super();
    if (!options.token && !options.ticket) throw new TypeError("ChatClient: pass a token and/or a ticket provider");
    this.#store = options.store ?? new MemoryStore();
    this.#backoff = new Backoff(options.backoff ?? {}, options.random ?? Math.random);
    this.#random = options.random ?? Math.random;
    const ws = (options.WebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket) as WebSocketConstructor | undefined;
    this.#WebSocket = ws;
    this.#nodeWs = isNodeWs(ws);
    this.onListenerError = (err, event) => this.#log("error", `listener of "${String(event)}" threw`, err);
  }

  // ---------------------------------------------------------------- public API

  get state(): ClientState {
    return this.#state;
  }
  get userId(): string | undefined {
    return this.#userId;
  }
  get hello(): ServerHello | undefined {
    return this.#hello;
  }
  /**
   * Re-joins made to fill a gap in a room's stream (a frame beyond
   * lastSeq + 1, or a replay that ended short of `joined.last_seq`) since
   * the client was made. Also announced by the `gap` event.
   */
  get gapRecoveries(): number {
    return this.#gapRecoveries;
  }
  /** "1.0" for a server without protocol_version. */
  get serverVersion(): string | undefined {
    if (!this.#hello) return undefined;
    return (this.#hello as Partial<ServerHello>).protocol_version ?? "1.0";
  }
  /**
   * The server's edit window in ms (`hello.limits.edit_window_ms`, 1.2): 0
   * means edits are off. Undefined before the first hello and for servers
   * before 1.2, which do not announce it.
   */
  get editWindowMs(): number | undefined {
    const w = (this.#hello?.limits as Partial<ServerHello["limits"]> | undefined)?.edit_window_ms;
    return typeof w === "number" ? w : undefined;
  }
  /** Whether the last hello offers `edit` (features list "edits"); `room.edit` rejects otherwise. */
  get canEdit(): boolean {
    return serves(this.#hello, "edit");
  }
  /** Whether the last hello offers `delete` ("deletes", or "edits" from a 1.1 server); `room.delete` rejects otherwise. */
  get canDelete(): boolean {
    return serves(this.#hello, "delete");
  }
  /** Rooms the client joins on every connection (including ones restored from the store). */
  get rooms(): Room[] {
    return [...this.#rooms.values()];
  }
  room(roomId: string): Room | undefined {
    return this.#rooms.get(roomId);
  }
  /** Sends, edits and deletes not acked yet, oldest first. */
  get outbox(): PendingSend[] {
    return this.#outbox.list();
  }
  /** The heartbeat mode this client asks for ("auto" resolved). */
  get heartbeatMode(): "app" | "ws" {
    const h = this.options.heartbeat ?? "auto";
    if (h !== "auto") return h;
    return this.#nodeWs ? "ws" : "app";
  }

  /**
   * Loads the store (rooms and outbox of the last user) without connecting.
   * connect() and join() call it; calling it again does nothing.
   */
  restore(): Promise<void> {
    if (!this.#restored) this.#restored = this.#doRestore();
    return this.#restored;
  }

  /**
   * Connects and keeps the connection up. Resolves at the first `hello`, once
   * the rooms known then are resumed; rejects with ChatError when the
   * credential is refused for good (403, 4003, repeated 401/4001).
   */
  connect(): Promise<void> {
    if (this.#state === "closed") return Promise.reject(new ChatError("closed", "client is closed"));
    const p = new Promise<void>((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === "idle") {
      this.#setState("connecting");
      void this.restore().then(
        () => this.#attempt(),
        (err) => this.#fail(new ChatError("internal", `restore failed: ${String(err)}`)),
      );
    } else if (this.#conn?.resumed) {
      this.#resolveConnect();
    }
    return p;
  }

  /** Closes for good (1000) and stops reconnecting. The outbox stays in the store. */
  close(): void {
    if (this.#state === "closed") return;
    this.#setState("closed");
    this.#teardown(new ChatError("closed", "client closed"));
  }

  /** Waits until every pending change is written to the store. */
  async flush(): Promise<void> {
    this.#saveChain = this.#saveChain.then(() => this.#writeState());
    await this.#saveChain;
  }

  /**
   * Joins a room (or returns it when already wanted) and resolves once it is
   * live. A room with a stored lastSeq resumes from it: the missed messages
   * arrive as events. A room without local state is replayed from
   * `sinceSeq`, by default 0: its whole history arrives as events, so the
   * first join misses nothing sent before it. `sinceSeq: null` starts at the
   * live edge (no replay; page older history over REST, §13.4), for large
   * rooms.
   */
  async join(roomId: string, opts: { sinceSeq?: number | null } = {}): Promise<Room> {
    if (this.#state === "closed") throw new ChatError("closed", "client is closed");
    await this.restore();
    if (this.#closed()) throw new ChatError("closed", "client is closed");
    let room = this.#rooms.get(roomId);
    if (!room) {
      const snap: RoomSnapshot = {};
      const since = opts.sinceSeq === undefined ? 0 : opts.sinceSeq;
      if (since !== null) snap.lastSeq = since;
      room = this.#newRoom(roomId, snap);
      this.#rooms.set(roomId, room);
      this.#persistSoon();
    }
    if (room.joinedOnSocket) return room;
    const r = room;
    const live = new Promise<void>((resolve, reject) => r.joinWaiters.push({ resolve, reject }));
    const conn = this.#conn;
    // During a resume the room is either in it or joined right away.
    if (conn?.hello && r.pendingJoins === 0) this.#sendJoin(conn, r, "join");
    await live;
    return r;
  }

  /** @internal the server frame types the dispatcher handles (unit test against the schemas). */
  handledFrameTypes(): string[] {
    return Object.keys(this.#handlers);
  }

  // ------------------------------------------------------------ RoomHost

  /** @internal */
  roomSend(room: Room, body: string, clientMsgId?: string): Promise<ServerAck> {
    return this.#enqueue({ room: room.id, kind: "send", body, clientMsgId: clientMsgId ?? uuid() });
  }
  /** @internal */
  roomEdit(room: Room, seq: number, body: string, clientMsgId?: string): Promise<ServerAck> {
    return this.#enqueue({ room: room.id, kind: "edit", body, seq, clientMsgId: clientMsgId ?? uuid() });
  }
  /** @internal */
  roomDelete(room: Room, seq: number, clientMsgId?: string): Promise<ServerAck> {
    return this.#enqueue({ room: room.id, kind: "delete", seq, clientMsgId: clientMsgId ?? uuid() });
  }
  /** @internal */
  roomTyping(room: Room): void {
    const conn = this.#conn;
    if (!conn?.resumed || !room.joinedOnSocket) return;
    const now = Date.now();
    if (now - room.lastTypingAt < TYPING_THROTTLE_MS) return;
    room.lastTypingAt = now;
    // Not tracked: typing has no success reply, so a tracked id would stay
    // forever; an error for it (rate_limited, not_joined) is emitted as is.
    // Ephemeral: dropped rather than queued when the events bucket is empty.
    if (conn.bucket.queue.length === 0 && conn.bucket.take()) {
      this.#sendFrame(conn, { type: "typing", id: `t${++this.#reqCounter}`, room: room.id });
    }
  }
  /** @internal */
  roomMarkRead(room: Room, seq: number): Promise<void> {
    if (this.#state === "closed") return Promise.reject(new ChatError("closed", "client is closed"));
    if (room.forgotten) return Promise.reject(new ChatError("closed", "room was left or removed", { room: room.id }));
    room.pendingRead = Math.max(room.pendingRead ?? 0, seq);
    // Optimistic: the badge clears at once; the server's `read` confirms it.
    if (seq > room.readSeq) {
      room.readSeq = seq;
      this.#persistSoon();
    }
    const p = new Promise<void>((resolve, reject) => room.readWaiters.push({ seq, resolve, reject }));
    const conn = this.#conn;
    if (conn?.hello && room.joinedOnSocket) this.#sendRead(conn, room);
    return p;
  }
  /** @internal */
  async roomLeave(room: Room): Promise<void> {
    const conn = this.#conn;
    const wasJoined = room.joinedOnSocket;
    this.#forgetRoom(room, "left");
    if (conn?.hello && wasJoined && conn.socket.readyState === OPEN) {
      await new Promise<void>((resolve) => {
        const ok = this.#request(conn, { type: "leave", room: room.id }, { kind: "leave", room: room.id, resolve });
        if (!ok) resolve();
      });
    }
  }

  // ---------------------------------------------------------- connection

  #pickUrl(): string {
    const u = this.options.url;
    if (typeof u === "function") return u();
    if (typeof u === "string") return u;
    if (u.length === 0) throw new TypeError("ChatClient: empty url list");
    const url = u[this.#urlIndex % u.length]!;
    this.#urlIndex++;
    return url;
  }

  async #attempt(): Promise<void> {
    this.#reconnectTimer = undefined;
    if (this.#state === "closed") return;
    const Ctor = this.#WebSocket;
    if (!Ctor) {
      this.#fail(new ChatError("bad_request", "no WebSocket implementation: pass options.WebSocket (e.g. `ws` on Node)"));
      return;
    }
    const useTicket = !!this.options.ticket;
    if (!useTicket && !this.#nodeWs) {
      this.#fail(
        new ChatError("bad_request", "token auth needs a WebSocket that can set headers (Node `ws`); pass a ticket provider"),
      );
      return;
    }
    let credential: string;
    try {
      credential = useTicket ? await this.options.ticket!() : await this.#callToken();
    } catch (err) {
      if (this.#closed()) return;
      // A provider that says the user is logged out ends it; anything else
      // (REST unreachable...) is retried like a network error.
      const code = err instanceof ChatError ? err.code : undefined;
      if (code === "unauthorized" || code === "forbidden") {
        this.#fail(err as ChatError);
        return;
      }
      this.#log("warn", "credential provider failed; retrying", err);
      const error =
        err instanceof ChatError ? err : new ChatError("provider_failed", `credential provider failed: ${String(err)}`);
      this.#scheduleReconnect(this.#backoff.next(), { reason: "credential provider failed", error });
      return;
    }
    if (this.#closed()) return;
    let url: string;
    let socket: SocketLike;
    try {
      url = this.#pickUrl();
      socket = openSocket({
        url,
        WebSocket: Ctor,
        ...(useTicket ? { ticket: credential } : { token: credential }),
        appHeartbeat: this.heartbeatMode === "app",
      });
    } catch (err) {
      this.#log("error", "cannot open socket", err);
      this.#scheduleReconnect(this.#backoff.next(), {
        reason: String(err),
        error: new ChatError("network", `cannot open socket: ${String(err)}`),
      });
      return;
    }
    const conn = new Connection(socket, url);
    this.#conn = conn;
    this.#log("debug", "connecting", { url });
    const connectTimeout = this.options.connectTimeoutMs ?? 15_000;
    this.#timer(conn, connectTimeout, () => {
      if (!conn.hello) this.#abort(conn, "no hello in time");
    });
    socket.onopen = () => this.#log("debug", "socket open", { url });
    socket.onerror = (ev) => {
      if (this.#conn !== conn) return;
      const status = handshakeStatus(ev);
      if (status !== undefined) conn.handshakeStatus = status;
      this.#log("debug", "socket error", { status, message: (ev as { message?: unknown })?.message });
    };
    socket.onclose = (ev) => {
      if (this.#conn !== conn) return;
      this.#onLost(conn, ev.code, ev.reason ?? "");
    };
    socket.onmessage = (ev) => {
      if (this.#conn !== conn) return;
      this.#onData(conn, ev.data);
    };
    // Node `ws` exposes WebSocket pings: they prove the server is alive.
    onWsPing(socket, () => {
      if (this.#conn === conn) this.#armLiveness(conn);
    });
  }

  /** Drops a socket we consider dead, without waiting for a close handshake. */
  #abort(conn: Connection, why: string): void {
    if (this.#conn !== conn) return;
    this.#log("warn", `dropping connection: ${why}`);
    detach(conn.socket);
    killSocket(conn.socket, 4000, why);
    this.#onLost(conn, 1006, why);
  }

  #onLost(conn: Connection, code: number, reason: string): void {
    if (this.#conn !== conn) return;
    this.#conn = undefined;
    conn.dispose();
    // Queued frames fail now (their socket is gone): a queued leave resolves.
    for (const f of conn.bucket.queue.splice(0)) f();
    this.#outbox.resetInflight();
    if (this.#pumpTimer) clearTimeout(this.#pumpTimer);
    this.#pumpTimer = undefined;
    for (const room of this.#rooms.values()) {
      room.joinedOnSocket = false;
      room.pendingJoins = 0;
    }
    for (const req of conn.requests.values()) if (req.kind === "leave") req.resolve?.();
    if (this.#state === "closed") return;

    let decision: Decision;
    let shownCode = code;
    if (!conn.hello && conn.handshakeStatus !== undefined) {
      shownCode = conn.handshakeStatus;
      decision = decideOnHandshake(conn.handshakeStatus, this.#backoff, this.#random);
    } else if (!conn.hello) {
      decision = decideOnHandshake(undefined, this.#backoff, this.#random);
    } else {
      decision = decideOnClose(code, reason, this.#backoff, this.#random);
    }
    this.#log("info", "connection lost", { code: shownCode, reason, hello: !!conn.hello });
    if (decision.reconnect && decision.authFailure) {
      // A 4001 at the credential's expiry is normal (ticket-only clients, or
      // a renewal that failed): a fresh credential fixes it. A refused
      // handshake, or a 4001 long before expiry (session revoked), means the
      // provider's credential is bad: count those.
      const expired = !!conn.hello && Date.now() >= conn.expiresAtLocal - 2_000;
      if (expired) this.#authFailures = 0;
      else this.#authFailures++;
      if (this.#authFailures >= MAX_AUTH_FAILURES) {
        decision = {
          reconnect: false,
          error: new ChatError("unauthorized", `credential refused ${this.#authFailures} times in a row`, {
            closeCode: code,
          }),
        };
      }
    }
    if (!decision.reconnect) {
      this.#fail(decision.error);
      return;
    }
    this.#scheduleReconnect(decision.delayMs, { code: shownCode, reason: reason || decision.why });
  }

  #scheduleReconnect(delayMs: number, info: StateInfo): void {
    if (this.#state === "closed") return;
    this.#setState("reconnecting", { ...info, delayMs });
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => void this.#attempt(), delayMs);
  }

  /** Fatal: state closed, no reconnect, everyone waiting is told. */
  #fail(err: ChatError): void {
    if (this.#state === "closed") return;
    this.#log("error", "giving up", err);
    this.#setState("closed", { error: err, ...(err.closeCode !== undefined ? { code: err.closeCode } : {}) });
    this.#teardown(err);
    this.emit("error", err);
  }

  #teardown(err: ChatError): void {
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    if (this.#pumpTimer) clearTimeout(this.#pumpTimer);
    this.#reconnectTimer = undefined;
    this.#pumpTimer = undefined;
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn) {
      conn.dispose();
      for (const f of conn.bucket.queue.splice(0)) f();
      detach(conn.socket);
      try {
        conn.socket.close(1000, "client closed");
      } catch {
        /* not open yet */
      }
      for (const req of conn.requests.values()) req.resolve?.();
    }
    this.#state = "closed";
    for (const w of this.#connectWaiters.splice(0)) w.reject(err);
    for (const waiters of this.#sendWaiters.values()) for (const w of waiters) w.reject(err);
    this.#sendWaiters.clear();
    for (const room of this.#rooms.values()) {
      room.joinedOnSocket = false;
      for (const w of room.joinWaiters.splice(0)) w.reject(err);
      for (const w of room.readWaiters.splice(0)) w.reject(err);
      room.endIterators();
    }
    void this.flush().catch((e) => this.#log("error", "store write failed", e));
  }

  /** A method, not a field read, so TypeScript does not narrow it across awaits. */
  #closed(): boolean {
    return this.#state === "closed";
  }

  #setState(s: ClientState, info?: StateInfo): void {
    const changed = this.#state !== s;
    this.#state = s;
    // "reconnecting" repeats with a new delay on each failed attempt: tell the app.
    if (changed || s === "reconnecting") this.emit("state", s, info);
  }

  #timer(conn: Connection, ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      conn.timers.delete(t);
      if (this.#conn === conn) fn();
    }, ms);
    conn.timers.add(t);
  }

  /** §9 liveness: nothing at all from the server for 2 x heartbeat_ms (+ margin) means dead. */
  #armLiveness(conn: Connection): void {
    if (!conn.livenessMs) return;
    if (conn.livenessTimer) clearTimeout(conn.livenessTimer);
    conn.livenessTimer = setTimeout(() => this.#abort(conn, "heartbeat timeout"), conn.livenessMs);
  }

  // ------------------------------------------------------------ frames in

  #onData(conn: Connection, data: unknown): void {
    this.#armLiveness(conn);
    let text: string;
    if (typeof data === "string") text = data;
    else if (typeof TextDecoder !== "undefined" && (data instanceof ArrayBuffer || ArrayBuffer.isView(data))) {
      // The server sends text frames only; some implementations hand them over as bytes.
      text = new TextDecoder().decode(data as ArrayBuffer);
    } else text = String(data);
    let frame: unknown;
    try {
      frame = JSON.parse(text);
    } catch {
      this.#log("warn", "ignoring a frame that is not JSON");
      return;
    }
    if (!frame || typeof frame !== "object" || typeof (frame as { type?: unknown }).type !== "string") {
      this.#log("warn", "ignoring a frame without type");
      return;
    }
    const f = frame as ServerFrame;
    const handler = (this.#handlers as Record<string, ((c: Connection, f: ServerFrame) => void) | undefined>)[f.type];
    // §3: frames of unknown types (a later 1.x server) are ignored.
    if (!handler) {
      this.#log("debug", `ignoring unknown frame type ${f.type}`);
      return;
    }
    if (!conn.hello && f.type !== "hello") {
      this.#log("warn", `frame ${f.type} before hello ignored`);
      return;
    }
    try {
      handler(conn, f);
    } catch (err) {
      this.#log("error", `handling ${f.type} failed`, err);
    }
  }

  /** The dispatcher: one entry per server frame type of the schemas (checked by a unit test). */
  readonly #handlers: { [K in ServerFrameType]: (conn: Connection, f: Extract<ServerFrame, { type: K }>) => void } = {
    hello: (c, f) => this.#onHello(c, f),
    joined: (c, f) => this.#onJoined(c, f),
    synced: (c, f) => this.#onSynced(c, f),
    history_gone: (_c, f) => this.#onHistoryGone(f),
    reset: (_c, f) => this.#onReset(f),
    left: (c, f) => this.#onLeft(c, f),
    ack: (c, f) => this.#onAck(c, f),
    message: (c, f) => this.#onStream(c, f),
    edit: (c, f) => this.#onStream(c, f),
    delete: (c, f) => this.#onStream(c, f),
    typing: (_c, f) => this.#onTyping(f),
    read: (c, f) => this.#onRead(c, f),
    presence: (_c, f) => this.#onPresence(f),
    pong: (c, f) => {
      if (f.id !== undefined) c.requests.delete(String(f.id));
    },
    auth_ok: (c, f) => this.#onAuthOk(c, f),
    error: (c, f) => this.#onError(c, f),
    ping: (c) => this.#sendFrame(c, { type: "pong" }),
    room_added: (_c, f) => this.emit("room_added", f),
    room_removed: (_c, f) => this.#onRoomRemoved(f),
    room_updated: (_c, f) => this.emit("room_updated", f),
    room_seq: (_c, f) => this.emit("room_seq", f),
  };

  #onHello(conn: Connection, h: ServerHello): void {
    if (conn.hello) {
      this.#log("warn", "second hello ignored");
      return;
    }
    conn.hello = h;
    if (h.limits) conn.bucket.configure(h.limits.events_burst, h.limits.events_per_sec);
    if (typeof h.limits?.send_burst === "number" && typeof h.limits.send_per_sec === "number") {
      conn.sendBucket.configure(h.limits.send_burst, h.limits.send_per_sec);
    }
    const previousUser = this.#userId;
    this.#userId = h.user_id;
    this.#hello = h;
    // Credential lifetime, from the relative field (device clocks may be off).
    const expiresIn =
      typeof h.token_expires_in_ms === "number" ? h.token_expires_in_ms : h.token_expires_at - Date.now();
    conn.expiresAtLocal = Date.now() + expiresIn;
    this.#scheduleRenewal(conn, expiresIn);
    this.#setupHeartbeat(conn, h);
    this.#timer(conn, STABLE_AFTER_MS, () => {
      this.#backoff.reset();
      this.#authFailures = 0;
    });
    const go = () => {
      if (this.#conn !== conn) return;
      this.#setState("online");
      this.emit("hello", h);
      this.#persistSoon();
      this.#resume(conn);
    };
    if (previousUser !== undefined && previousUser !== h.user_id) {
      // Another user signed in with the same store: their rooms and outbox
      // are theirs; load this user's state instead.
      this.#log("info", "user changed; loading that user's state", { from: previousUser, to: h.user_id });
      void this.#loadUser(h.user_id).then(go, (err) => {
        this.#log("error", "store read failed", err);
        go();
      });
    } else go();
  }

  #setupHeartbeat(conn: Connection, h: ServerHello): void {
    const hb = typeof h.heartbeat_ms === "number" && h.heartbeat_ms > 0 ? h.heartbeat_ms : 25_000;
    const mode = (h as Partial<ServerHello>).heartbeat ?? "ws";
    conn.livenessMs = 2 * hb + Math.max(1_000, Math.floor(hb / 2));
    this.#armLiveness(conn);
    if (mode === "ws" && !this.#nodeWs) {
      // WebSocket pings are invisible here: probe with client `ping`s so a
      // quiet but healthy connection keeps showing traffic.
      conn.pingInterval = setInterval(() => {
        if (this.#conn === conn) this.#request(conn, { type: "ping" }, { kind: "ping" });
      }, hb);
    }
  }

  #features(conn: Connection | undefined): readonly string[] {
    return (conn?.hello as Partial<ServerHello> | undefined)?.features ?? [];
  }
  /** 1.1 fields (epoch) only to a server that announced a protocol_version, 1.1 or later (§19.3). */
  #is11(conn: Connection): boolean {
    return (conn.hello as Partial<ServerHello> | undefined)?.protocol_version !== undefined;
  }

  #resume(conn: Connection): void {
    const rooms = [...this.#rooms.values()].filter((r) => !r.forgotten);
    conn.resumeOutstanding = 0;
    // Safety net: the outbox waits for the resume only to keep replays ahead
    // of re-sends; if an answer never comes, send anyway (re-sends are
    // idempotent and messages are deduplicated by seq).
    this.#timer(conn, RESUME_WATCHDOG_MS, () => {
      if (!conn.resumed) {
        this.#log("warn", "resume not answered in time; sending the outbox anyway");
        this.#resumeDone(conn);
      }
    });
    if (rooms.length === 0) {
      this.#resumeDone(conn);
      return;
    }
    if (this.#features(conn).includes("sync")) {
      const limits = conn.hello?.limits;
      const chunks = chunkSync(
        rooms.map((r) => {
          const e: SyncEntry = { room: r.id };
          if (r.lastSeq !== undefined) e.since_seq = r.lastSeq;
          if (r.epoch !== undefined && r.lastSeq !== undefined) e.epoch = r.epoch;
          return e;
        }),
        limits?.max_sync_rooms ?? 1000,
        limits?.max_frame_bytes ?? 65536,
      );
      for (const entries of chunks) {
        for (const e of entries) this.#rooms.get(e.room)!.pendingJoins++;
        conn.resumeOutstanding++;
        this.#request(conn, { type: "sync", rooms: entries }, { kind: "sync", rooms: entries.map((e) => e.room) });
      }
    } else {
      // One join per room (1.0 server). Paced to half the events bucket: a
      // burst of hundreds of joins would be rate limited, and 50 refusals in
      // a row close the socket with 4008.
      const limits = conn.hello?.limits;
      const first = Math.max(1, Math.floor((limits?.events_burst ?? 100) / 2));
      const perSecond = Math.max(1, Math.floor((limits?.events_per_sec ?? 50) / 2));
      conn.resumeOutstanding = rooms.length;
      let next = 0;
      const batch = (n: number) => {
        for (let k = 0; k < n && next < rooms.length; k++) {
          const r = rooms[next++]!;
          if (r.forgotten || this.#rooms.get(r.id) !== r) this.#resumeStep(conn);
          else this.#sendJoin(conn, r, "resume-join");
        }
        if (next < rooms.length) this.#timer(conn, 1_000, () => batch(perSecond));
      };
      batch(first);
    }
  }

  #resumeStep(conn: Connection): void {
    if (conn.resumed) return;
    conn.resumeOutstanding--;
    if (conn.resumeOutstanding <= 0) this.#resumeDone(conn);
  }

  #resumeDone(conn: Connection): void {
    if (conn.resumed || this.#conn !== conn) return;
    conn.resumed = true;
    this.#log("debug", "resumed");
    this.#resolveConnect();
    this.#pump();
  }

  #resolveConnect(): void {
    for (const w of this.#connectWaiters.splice(0)) w.resolve();
  }

  #sendJoin(conn: Connection, room: Room, kind: "join" | "resume-join"): void {
    const f: { type: "join"; room: string; since_seq?: number; epoch?: string } = { type: "join", room: room.id };
    if (room.lastSeq !== undefined) f.since_seq = room.lastSeq;
    if (room.epoch !== undefined && room.lastSeq !== undefined && this.#is11(conn)) f.epoch = room.epoch;
    room.pendingJoins++;
    this.#request(conn, f, { kind, room: room.id });
  }

  #onJoined(conn: Connection, j: ServerJoined): void {
    const req = this.#takeRequest(conn, j.id);
    const room = this.#rooms.get(j.room);
    if (!room || room.forgotten) {
      if (req?.kind === "resume-join") this.#resumeStep(conn);
      return;
    }
    room.pendingJoins = Math.max(0, room.pendingJoins - 1);
    const jj = j as Partial<ServerJoined> & ServerJoined;
    if (jj.epoch !== undefined) room.epoch = jj.epoch;
    if (typeof jj.read_seq === "number") {
      if (jj.read_seq > room.readSeq) room.readSeq = jj.read_seq;
      // A markRead the server never got (made offline, then the app restarted):
      // send the local marker now.
      else if (room.readSeq > jj.read_seq && room.pendingRead === undefined) room.pendingRead = room.readSeq;
    }
    room.online.clear();
    for (const u of j.online ?? []) room.online.add(u);
    if (room.lastSeq === undefined) {
      room.lastSeq = j.last_seq;
    } else if (room.lastSeq < j.last_seq && room.pendingJoins === 0) {
      // Replay ended short of last_seq (a gap was skipped): resume again (§12.2 step 5).
      this.#gapRecovery(room, j.last_seq);
      this.#sendJoin(conn, room, "join");
    }
    room.joinedOnSocket = true;
    this.#persistSoon();
    for (const w of room.joinWaiters.splice(0)) w.resolve();
    room.fire("joined", j);
    if (room.pendingRead !== undefined) this.#sendRead(conn, room);
    if (req?.kind === "resume-join") this.#resumeStep(conn);
  }

  #onSynced(conn: Connection, s: ServerSynced): void {
    const req = this.#takeRequest(conn, s.id);
    if (req?.kind === "sync") this.#resumeStep(conn);
  }

  #onHistoryGone(h: ServerHistoryGone): void {
    const room = this.#rooms.get(h.room);
    if (!room || room.forgotten) return;
    // Seqs below oldest_seq will never come: treat them as processed (§17.1).
    const target = h.oldest_seq - 1;
    if (room.lastSeq === undefined || room.lastSeq < target) room.lastSeq = target;
    this.#persistSoon();
    room.deliver("reset", h);
  }

  #onReset(r: ServerReset): void {
    const room = this.#rooms.get(r.room);
    if (!room || room.forgotten) return;
    // Another history: the local copy is void (§17.2).
    room.lastSeq = r.last_seq;
    room.epoch = r.epoch;
    this.#persistSoon();
    room.deliver("reset", r);
  }

  #onStream(conn: Connection, f: ServerMessage | ServerEdit | ServerDelete): void {
    const room = this.#rooms.get(f.room);
    if (!room || room.forgotten) return;
    const v = classify(room.lastSeq, f.seq);
    if (v === "duplicate") return;
    if (v === "gap") {
      this.#log("warn", "gap in room stream; re-joining", { room: f.room, lastSeq: room.lastSeq, seq: f.seq });
      if (room.pendingJoins === 0) {
        this.#gapRecovery(room, f.seq);
        this.#sendJoin(conn, room, "join");
      }
      return;
    }
    room.lastSeq = f.seq;
    if (f.type === "message") room.deliver("message", f);
    else if (f.type === "edit") room.deliver("edit", f);
    else room.deliver("delete", f);
    this.#persistSoon();
  }

  /** Counts and announces a re-join made to fill a gap (tests assert where they happen). */
  #gapRecovery(room: Room, seq: number): void {
    this.#gapRecoveries++;
    this.emit("gap", { room: room.id, lastSeq: room.lastSeq, seq });
  }

  #onTyping(t: ServerTyping): void {
    if (t.user === this.#userId) return; // own other device (§5.6)
    this.#rooms.get(t.room)?.fire("typing", t);
  }

  #onRead(conn: Connection, r: ServerRead): void {
    const room = this.#rooms.get(r.room);
    if (!room || room.forgotten) return;
    if (r.user === this.#userId) {
      const id = conn.readIds.get(r.room);
      if (id !== undefined && room.pendingRead !== undefined && r.seq >= Math.min(room.pendingRead, room.lastSeq ?? 0)) {
        conn.requests.delete(id);
        conn.readIds.delete(r.room);
      }
      if (r.seq > room.readSeq) room.readSeq = r.seq;
      if (room.pendingRead !== undefined && r.seq >= Math.min(room.pendingRead, room.lastSeq ?? 0)) {
        room.pendingRead = undefined;
      }
      for (const w of room.readWaiters.splice(0)) w.resolve();
      this.#persistSoon();
    }
    room.fire("read", r);
  }

  #onPresence(p: ServerPresence): void {
    const room = this.#rooms.get(p.room);
    if (!room || room.forgotten) return;
    if (p.status === "online") room.online.add(p.user);
    else room.online.delete(p.user);
    room.fire("presence", p);
  }

  #onLeft(conn: Connection, l: ServerLeft): void {
    const req = this.#takeRequest(conn, l.id);
    if (req?.kind === "leave") {
      req.resolve?.();
      return;
    }
    if (l.reason === "requested") return;
    const room = this.#rooms.get(l.room);
    if (!room) return;
    // Removed or room deleted (unknown reasons count as removed, §19.3).
    this.#forgetRoom(room, l.reason === "room_deleted" ? "room_deleted" : "removed");
  }

  #onRoomRemoved(f: ServerRoomRemoved): void {
    const room = this.#rooms.get(f.room);
    if (room) {
      const reason: RemovedReason = f.reason === "left" || f.reason === "room_deleted" ? f.reason : "removed";
      this.#forgetRoom(room, reason);
    }
    this.emit("room_removed", f);
  }

  #forgetRoom(room: Room, reason: RemovedReason): void {
    if (this.#rooms.get(room.id) === room) this.#rooms.delete(room.id);
    room.forget(reason, new ChatError(reason === "left" ? "closed" : "forbidden", `room ${reason}`, { room: room.id }));
    this.#persistSoon();
  }

  #onAck(conn: Connection, a: ServerAck): void {
    this.#takeRequest(conn, a.id);
    const entry = this.#outbox.remove(a.client_msg_id);
    if (!entry) return;
    if (this.#outbox.size === 0) this.#careful = false;
    for (const w of this.#sendWaiters.get(a.client_msg_id) ?? []) w.resolve(a);
    this.#sendWaiters.delete(a.client_msg_id);
    this.#persistSoon();
    this.emit("outbox", this.#outbox.size);
    this.#pump();
  }

  #onAuthOk(conn: Connection, a: ServerAuthOk): void {
    this.#takeRequest(conn, a.id);
    conn.expiresAtLocal = Date.now() + a.expires_in_ms;
    this.#log("debug", "credential renewed", { expiresInMs: a.expires_in_ms });
    this.#scheduleRenewal(conn, a.expires_in_ms);
  }

  #onError(conn: Connection, e: ServerError): void {
    const req = this.#takeRequest(conn, e.id);
    const err = ChatError.fromFrame(e);
    if (!req) {
      // Per-room answers of a sync carry `room` but no id.
      if (e.room !== undefined) {
        const room = this.#rooms.get(e.room);
        if (room && room.pendingJoins > 0) {
          room.pendingJoins--;
          this.#onJoinError(conn, room, err, "sync-entry");
          return;
        }
      }
      this.#log("warn", "server error", e);
      this.emit("error", err);
      return;
    }
    switch (req.kind) {
      case "out":
        this.#onOutboxError(conn, req.clientMsgId!, err);
        return;
      case "join":
      case "resume-join": {
        const room = req.room !== undefined ? this.#rooms.get(req.room) : undefined;
        if (room) room.pendingJoins = Math.max(0, room.pendingJoins - 1);
        if (room) this.#onJoinError(conn, room, err, req.kind === "join" ? "join" : "resume-join");
        else if (req.kind === "resume-join") this.#resumeStep(conn);
        return;
      }
      case "sync": {
        // The whole sync was refused: fall back to per-room joins.
        if (e.code === "rate_limited") this.emit("error", err);
        const delay = e.code === "rate_limited" ? (e.retry_after_ms ?? 1000) : 0;
        this.#log("warn", "sync refused; joining rooms one by one", e);
        const rooms = (req.rooms ?? []).map((id) => this.#rooms.get(id)).filter((r): r is Room => !!r);
        for (const r of rooms) r.pendingJoins = Math.max(0, r.pendingJoins - 1);
        this.#timer(conn, delay, () => {
          conn.resumeOutstanding += rooms.length;
          for (const r of rooms) if (!r.forgotten) this.#sendJoin(conn, r, "resume-join");
          else conn.resumeOutstanding--;
          this.#resumeStep(conn);
        });
        return;
      }
      case "read": {
        const room = req.room !== undefined ? this.#rooms.get(req.room) : undefined;
        if (!room) return;
        if (e.code === "rate_limited") {
          this.emit("error", err);
          this.#timer(conn, e.retry_after_ms ?? 1000, () => this.#sendRead(conn, room));
        } else if (e.code === "not_joined") {
          // Re-sent after the room's next `joined`.
        } else {
          room.pendingRead = undefined;
          for (const w of room.readWaiters.splice(0)) w.reject(err);
        }
        return;
      }
      case "auth": {
        // The connection works until the old credential expires: retry.
        const remaining = conn.expiresAtLocal - Date.now();
        const delay = Math.max(500, Math.min(10_000, Math.floor(remaining / 3)));
        this.#log("warn", `renewal refused (${e.code}); retrying in ${delay} ms`);
        if (e.code === "rate_limited") this.emit("error", err);
        this.#timer(conn, e.code === "rate_limited" ? (e.retry_after_ms ?? delay) : delay, () => void this.#renew(conn));
        return;
      }
      case "ping":
      case "leave":
        if (req.kind === "leave") req.resolve?.();
        this.emit("error", err);
        return;
    }
  }

  /**
   * A room's join failed. `kind`: a plain join, one of the per-room joins of
   * a resume (counted until the resume is done), or a room of a `sync`
   * (counted by the sync's `synced`, not here).
   */
  #onJoinError(conn: Connection, room: Room, err: ChatError, kind: "join" | "resume-join" | "sync-entry"): void {
    const code = err.code;
    if (!DEFINITIVE_JOIN_ERRORS.has(code)) {
      // rate_limited, unavailable, internal and codes of later servers (§19.3: like internal).
      if (code === "rate_limited") this.emit("error", err);
      const delay = err.retryAfterMs ?? 500 + fullJitter(2, {}, this.#random);
      this.#timer(conn, delay, () => {
        if (!room.forgotten) this.#sendJoin(conn, room, kind === "resume-join" ? "resume-join" : "join");
        else if (kind === "resume-join") this.#resumeStep(conn);
      });
      return;
    }
    // forbidden (not a member / no such room), not_found, limit_exceeded...:
    // the room cannot be joined; drop it from the resume set (§6).
    this.#log("warn", `cannot join ${room.id}: ${code}`);
    for (const w of room.joinWaiters.splice(0)) w.reject(err);
    this.#forgetRoom(room, "removed");
    if (kind === "resume-join") this.#resumeStep(conn);
  }

  // ------------------------------------------------------------ frames out

  #sendFrame(conn: Connection, frame: ClientFrame): boolean {
    if (this.#conn !== conn || conn.socket.readyState !== OPEN) return false;
    try {
      conn.socket.send(JSON.stringify(frame));
      return true;
    } catch (err) {
      this.#log("warn", "send failed", err);
      return false;
    }
  }

  /** Sends a request frame with a fresh id and remembers what it was for. */
  /**
   * Sends a request frame of the events bucket (everything but send/edit/
   * delete) with a fresh id and remembers what it was for. Paced by a local
   * mirror of the server's bucket (§8): many joins at once would otherwise be
   * refused, and 50 refusals in a row close the socket (4008). Returns false
   * when the socket is gone.
   */
  #request(conn: Connection, frame: ClientFrame, req: PendingRequest): boolean {
    if (this.#conn !== conn || conn.socket.readyState !== OPEN) return false;
    const go = () => {
      const id = `r${++this.#reqCounter}`;
      if (this.#sendFrame(conn, { ...frame, id } as ClientFrame)) conn.requests.set(id, req);
      else req.resolve?.();
    };
    if (conn.bucket.queue.length === 0 && conn.bucket.take()) go();
    else {
      conn.bucket.queue.push(go);
      this.#drainEvents(conn);
    }
    return true;
  }

  #drainEvents(conn: Connection): void {
    const b = conn.bucket;
    if (b.timer || b.queue.length === 0) return;
    const wait = b.waitMs();
    const t = setTimeout(() => {
      conn.timers.delete(t);
      b.timer = undefined;
      if (this.#conn !== conn) return;
      while (b.queue.length > 0 && b.take()) b.queue.shift()!();
      this.#drainEvents(conn);
    }, wait);
    b.timer = t;
    conn.timers.add(t);
  }

  #takeRequest(conn: Connection, id: string | number | undefined): PendingRequest | undefined {
    if (id === undefined) return undefined;
    const key = String(id);
    const req = conn.requests.get(key);
    conn.requests.delete(key);
    return req;
  }

  #sendRead(conn: Connection, room: Room): void {
    if (room.pendingRead === undefined) return;
    // A read has no reply on success (the broadcast carries no id): keep one
    // tracked id per room so errors can be matched without leaking ids.
    const send = () => {
      if (room.pendingRead === undefined) return;
      const old = conn.readIds.get(room.id);
      if (old !== undefined) conn.requests.delete(old);
      const id = `r${++this.#reqCounter}`;
      if (this.#sendFrame(conn, { type: "read", id, room: room.id, seq: room.pendingRead })) {
        conn.requests.set(id, { kind: "read", room: room.id });
        conn.readIds.set(room.id, id);
      }
    };
    if (conn.bucket.queue.length === 0 && conn.bucket.take()) send();
    else {
      conn.bucket.queue.push(send);
      this.#drainEvents(conn);
    }
  }

  #scheduleRenewal(conn: Connection, expiresInMs: number): void {
    if (!this.options.token) return; // ticket only: 4001 reconnects with a fresh ticket
    if (!Number.isFinite(expiresInMs)) return;
    this.#timer(conn, renewalDelay(expiresInMs), () => void this.#renew(conn));
  }

  async #renew(conn: Connection): Promise<void> {
    let token: string;
    try {
      token = await this.#callToken();
    } catch (err) {
      const remaining = conn.expiresAtLocal - Date.now();
      const delay = Math.max(500, Math.min(10_000, Math.floor(remaining / 3)));
      this.#log("warn", `token provider failed; retrying renewal in ${delay} ms`, err);
      this.#timer(conn, delay, () => void this.#renew(conn));
      return;
    }
    if (this.#conn !== conn) return;
    this.#request(conn, { type: "auth", token }, { kind: "auth" });
  }

  /**
   * Calls the token provider, one call at a time: a renewal and a reconnect
   * that need a token at once share one call. Why: a provider that rotates
   * refresh tokens and is called twice concurrently presents the same
   * refresh token twice, and the server treats the second as a reuse.
   */
  #callToken(): Promise<string> {
    if (!this.#tokenInFlight) {
      const p = Promise.resolve().then(() => this.options.token!());
      this.#tokenInFlight = p;
      const clear = () => {
        if (this.#tokenInFlight === p) this.#tokenInFlight = undefined;
      };
      p.then(clear, clear);
    }
    return this.#tokenInFlight;
  }

  // ------------------------------------------------------------ outbox

  #enqueue(entry: OutboxEntry): Promise<ServerAck> {
    if (this.#state === "closed") return Promise.reject(new ChatError("closed", "client is closed"));
    const p = new Promise<ServerAck>((resolve, reject) => {
      const list = this.#sendWaiters.get(entry.clientMsgId) ?? [];
      list.push({ resolve, reject });
      this.#sendWaiters.set(entry.clientMsgId, list);
    });
    if (this.#outbox.add(entry)) {
      this.#persistSoon();
      this.emit("outbox", this.#outbox.size);
      this.#pump();
    }
    return p;
  }

  /** Sends outbox entries in order, a window at a time, once the resume is done. */
  #pump(): void {
    const conn = this.#conn;
    if (!conn?.resumed || this.#state === "closed") return;
    const now = Date.now();
    if (this.#pausedUntil > now) {
      if (!this.#pumpTimer) {
        this.#pumpTimer = setTimeout(() => {
          this.#pumpTimer = undefined;
          this.#pump();
        }, this.#pausedUntil - now);
      }
      return;
    }
    const window = this.#careful ? 1 : OUTBOX_WINDOW;
    const edits = serves(conn.hello, "edit");
    const deletes = serves(conn.hello, "delete");
    const maxBody = conn.hello?.limits?.max_body_bytes;
    for (const e of this.#outbox.unsent()) {
      if (this.#outbox.inflightCount >= window) break;
      if (e.body !== undefined && maxBody !== undefined && utf8Length(e.body) > maxBody) {
        // Refused locally: the server would answer too_large anyway, and a
        // frame over max_frame_bytes would close the socket (1009) on every
        // re-send.
        this.#settleOutbox(e.clientMsgId, new ChatError("too_large", `body over ${maxBody} bytes`, { room: e.room }));
        continue;
      }
      let frame: ClientFrame;
      if (e.kind === "send") {
        frame = { type: "send", room: e.room, body: e.body ?? "", client_msg_id: e.clientMsgId };
      } else if (e.kind === "edit" ? !edits : !deletes) {
        const what = e.kind === "edit" ? "edits (none listed in hello.features, or the edit window is 0)" : "deletes";
        this.#settleOutbox(e.clientMsgId, new ChatError("bad_request", `this server does not serve ${what}`, { room: e.room }));
        continue;
      } else if (e.kind === "edit") {
        frame = { type: "edit", room: e.room, target_seq: e.seq ?? 0, body: e.body ?? "", client_msg_id: e.clientMsgId };
      } else {
        frame = { type: "delete", room: e.room, target_seq: e.seq ?? 0, client_msg_id: e.clientMsgId };
      }
      if (!conn.sendBucket.take()) {
        // Paced to hello.limits: the next entry goes when a token is there.
        if (!this.#pumpTimer) {
          this.#pumpTimer = setTimeout(() => {
            this.#pumpTimer = undefined;
            this.#pump();
          }, conn.sendBucket.waitMs());
        }
        break;
      }
      const id = `o${++this.#reqCounter}`;
      if (!this.#sendFrame(conn, { ...frame, id } as ClientFrame)) break;
      conn.requests.set(id, { kind: "out", clientMsgId: e.clientMsgId, room: e.room });
      this.#outbox.markInflight(e.clientMsgId, id);
    }
  }

  #onOutboxError(conn: Connection, clientMsgId: string, err: ChatError): void {
    this.#outbox.clearInflight(clientMsgId);
    if (!this.#outbox.has(clientMsgId)) return;
    if (DEFINITIVE_SEND_ERRORS.has(err.code)) {
      const room = this.#outbox.get(clientMsgId)?.room;
      this.#settleOutbox(clientMsgId, err);
      // forbidden: not a member (§6): the room is dropped like a refused join.
      const wanted = err.code === "forbidden" && room !== undefined ? this.#rooms.get(room) : undefined;
      if (wanted) this.#forgetRoom(wanted, "removed");
      this.#pump();
      return;
    }
    // rate_limited: wait as told and re-send, in order, one at a time for a
    // while (§8). internal/unavailable/unknown: retry later with the same id.
    let delay: number;
    if (err.code === "rate_limited") {
      delay = err.retryAfterMs ?? 1000;
      // The server's bucket is empty: so is ours, from here it refills at the announced rate.
      conn.sendBucket.tokens = 0;
      this.emit("error", err);
    } else {
      delay = 500 + fullJitter(2, {}, this.#random);
      this.#log("warn", `send failed (${err.code}); retrying`, { clientMsgId });
    }
    this.#careful = true;
    this.#pausedUntil = Math.max(this.#pausedUntil, Date.now() + delay);
    if (this.#conn === conn) this.#pump();
  }

  /** Removes an entry refused for good and rejects its promises. */
  #settleOutbox(clientMsgId: string, err: ChatError): void {
    this.#outbox.remove(clientMsgId);
    for (const w of this.#sendWaiters.get(clientMsgId) ?? []) w.reject(err);
    this.#sendWaiters.delete(clientMsgId);
    if (this.#outbox.size === 0) this.#careful = false;
    this.#persistSoon();
    this.emit("outbox", this.#outbox.size);
  }

  // ------------------------------------------------------------ persistence

  #newRoom(id: string, snap: RoomSnapshot): Room {
    return new Room(id, this, snap, (err) => this.#log("error", `room ${id} listener threw`, err));
  }

  async #doRestore(): Promise<void> {
    const user = await this.#store.get(STORE_USER_KEY);
    if (!user) return;
    this.#userId = user;
    await this.#loadUser(user);
  }

  /** Replaces rooms and outbox with `userId`'s stored state. */
  async #loadUser(userId: string): Promise<void> {
    const raw = await this.#store.get(stateKey(userId));
    let state: PersistedState | undefined;
    if (raw) {
      try {
        const parsed = JSON.parse(raw) as PersistedState;
        if (parsed && parsed.v === 1) state = parsed;
      } catch {
        this.#log("warn", "ignoring unreadable stored state");
      }
    }
    for (const room of this.#rooms.values()) room.forget("removed", new ChatError("closed", "user changed"));
    this.#rooms.clear();
    for (const [id, snap] of Object.entries(state?.rooms ?? {})) this.#rooms.set(id, this.#newRoom(id, snap));
    const waiting = new Set(this.#sendWaiters.keys());
    this.#outbox.load(state?.outbox ?? []);
    for (const id of waiting) {
      if (!this.#outbox.has(id)) {
        for (const w of this.#sendWaiters.get(id) ?? []) w.reject(new ChatError("closed", "user changed"));
        this.#sendWaiters.delete(id);
      }
    }
    this.emit("outbox", this.#outbox.size);
  }

  /** Batches writes: one per tick at most, serialized. */
  #persistSoon(): void {
    if (this.#saveScheduled) return;
    this.#saveScheduled = true;
    queueMicrotask(() => {
      this.#saveScheduled = false;
      this.#saveChain = this.#saveChain
        .then(() => this.#writeState())
        .catch((err) => this.#log("error", "store write failed", err));
    });
  }

  async #writeState(): Promise<void> {
    const user = this.#userId;
    if (!user) return;
    const state: PersistedState = { v: 1, rooms: {}, outbox: this.#outbox.list() };
    for (const [id, room] of this.#rooms) if (!room.forgotten) state.rooms[id] = room.snapshot();
    await this.#store.set(STORE_USER_KEY, user);
    await this.#store.set(stateKey(user), JSON.stringify(state));
  }

  #log(level: LogLevel, msg: string, data?: unknown): void {
    this.options.onLog?.(level, msg, data);
  }
}
