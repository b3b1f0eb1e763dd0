/**
 * ChatClient: the public facade of the SDK, the connection state machine of
 * protocol §12. One socket at a time; on every (re)connection it waits for
 * `hello`, resumes every room the app wants (bulk `sync` when the server has
 * it, else one `join` each), then re-sends the outbox in order. Every message
 * reaches the app once, in seq order, deduplicated by (room, seq), across
 * reconnects and restarts.
 *
 * The work is done by the modules below it, wired here, each depending only
 * on the ones under it (state is passed in explicitly, never reached into):
 *   connection.ts  socket lifecycle: connect, hello, heartbeats, close codes, backoff, renewal
 *   dispatch.ts    an incoming frame -> state, store, events
 *   resume.ts      join/sync on each socket, the sequencer's gap recovery, replay
 *   pump.ts        the outbox: paced sends, acks, retries, edits and deletes
 *   session.ts     the user, wanted rooms, outbox, and their persistence
 *   wire.ts        one socket's state and the primitives that put frames on it
 * This file holds the public API: options, events, the getters, join, and
 * the RoomHost calls a Room makes.
 */
import type { BackoffOptions } from "./backoff.js";
import { Connector, type ClientState, type CredentialProvider, type HeartbeatMode, type StateInfo } from "./connection.js";
import { Dispatcher } from "./dispatch.js";
import { Emitter } from "./emitter.js";
import { ChatError } from "./errors.js";
import type {
  ServerAck,
  ServerHello,
  ServerRoomAdded,
  ServerRoomRemoved,
  ServerRoomSeq,
  ServerRoomUpdated,
} from "./generated/protocol.js";
import type { OutboxEntry } from "./outbox.js";
import { Pump } from "./pump.js";
import { Resumer, type GapInfo } from "./resume.js";
import type { Room, RoomHost, RoomSnapshot } from "./room.js";
import { Session } from "./session.js";
import { MemoryStore, type Store } from "./store.js";
import { OPEN, uuid } from "./transport.js";
import { serves, type Log, type LogLevel } from "./wire.js";

export type { ClientState, CredentialProvider, HeartbeatMode, StateInfo } from "./connection.js";
export type { LogLevel } from "./wire.js";
export type { GapInfo, SyncEntry } from "./resume.js";
// Helpers of the modules below, kept importable from here (the unit tests do).
export { TokenBucket, utf8Length } from "./wire.js";
export { chunkSync } from "./resume.js";

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


const TYPING_THROTTLE_MS = 2_000;

export class ChatClient extends Emitter<ClientEvents> implements RoomHost {
  readonly #session: Session;
  readonly #pump: Pump;
  readonly #resume: Resumer;
  readonly #dispatch: Dispatcher;
  readonly #connector: Connector;
  #restored: Promise<void> | undefined;

  constructor(readonly options: ChatClientOptions) {
    super();
    if (!options.token && !options.ticket) throw new TypeError("ChatClient: pass a token and/or a ticket provider");
    const log: Log = (level, msg, data) => this.options.onLog?.(level, msg, data);
    const random = options.random ?? Math.random;
    const session = new Session(options.store ?? new MemoryStore(), this, log);
    const closed = () => this.#connector.closed();
    const error = (err: ChatError) => this.emit("error", err);
    const pump = new Pump({
      session,
      conn: () => this.#connector.conn,
      closed,
      onSize: (n) => this.emit("outbox", n),
      onError: error,
      log,
      random,
    });
    const resume = new Resumer({
      session,
      onResumed: () => {
        this.#connector.resolveConnect();
        pump.pump();
      },
      onGap: (info) => this.emit("gap", info),
      onError: error,
      log,
      random,
    });
    const dispatch = new Dispatcher({
      session,
      resume,
      pump,
      lifecycle: {
        onHello: (c, h) => this.#connector.onHello(c, h),
        onAuthOk: (c, a) => this.#connector.onAuthOk(c, a),
        onAuthRefused: (c, e, err) => this.#connector.onAuthRefused(c, e, err),
      },
      events: {
        error,
        roomAdded: (f) => this.emit("room_added", f),
        roomRemoved: (f) => this.emit("room_removed", f),
        roomUpdated: (f) => this.emit("room_updated", f),
        roomSeq: (f) => this.emit("room_seq", f),
      },
      log,
    });
    this.#connector = new Connector({
      options,
      session,
      resume,
      pump,
      dispatch,
      events: {
        state: (s, info) => this.emit("state", s, info),
        error,
        hello: (h) => this.emit("hello", h),
      },
      loadUser: (userId) => this.#loadUser(userId),
      log,
      random,
    });
    this.#session = session;
    this.#pump = pump;
    this.#resume = resume;
    this.#dispatch = dispatch;
    this.onListenerError = (err, event) => log("error", `listener of "${String(event)}" threw`, err);
  }

  // ---------------------------------------------------------------- public API

  get state(): ClientState {
    return this.#connector.state;
  }
  get userId(): string | undefined {
    return this.#session.userId;
  }
  get hello(): ServerHello | undefined {
    return this.#connector.hello;
  }
  /**
   * Re-joins made to fill a gap in a room's stream (a frame beyond
   * lastSeq + 1, or a replay that ended short of `joined.last_seq`) since
   * the client was made. Also announced by the `gap` event.
   */
  get gapRecoveries(): number {
    return this.#resume.gapRecoveries;
  }
  /** "1.0" for a server without protocol_version. */
  get serverVersion(): string | undefined {
    const hello = this.hello;
    if (!hello) return undefined;
    return (hello as Partial<ServerHello>).protocol_version ?? "1.0";
  }
  /**
   * The server's edit window in ms (`hello.limits.edit_window_ms`, 1.2): 0
   * means edits are off. Undefined before the first hello and for servers
   * before 1.2, which do not announce it.
   */
  get editWindowMs(): number | undefined {
    const w = (this.hello?.limits as Partial<ServerHello["limits"]> | undefined)?.edit_window_ms;
    return typeof w === "number" ? w : undefined;
  }
  /** Whether the last hello offers `edit` (features list "edits"); `room.edit` rejects otherwise. */
  get canEdit(): boolean {
    return serves(this.hello, "edit");
  }
  /** Whether the last hello offers `delete` ("deletes", or "edits" from a 1.1 server); `room.delete` rejects otherwise. */
  get canDelete(): boolean {
    return serves(this.hello, "delete");
  }
  /** Rooms the client joins on every connection (including ones restored from the store). */
  get rooms(): Room[] {
    return [...this.#session.rooms.values()];
  }
  room(roomId: string): Room | undefined {
    return this.#session.rooms.get(roomId);
  }
  /** Sends, edits and deletes not acked yet, oldest first. */
  get outbox(): PendingSend[] {
    return this.#session.outbox.list();
  }
  /** The heartbeat mode this client asks for ("auto" resolved). */
  get heartbeatMode(): "app" | "ws" {
    return this.#connector.heartbeatMode;
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
    return this.#connector.connect(() => this.restore());
  }

  /** Closes for good (1000) and stops reconnecting. The outbox stays in the store. */
  close(): void {
    this.#connector.close();
  }

  /** Waits until every pending change is written to the store. */
  flush(): Promise<void> {
    return this.#session.flush();
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
    if (this.#connector.closed()) throw new ChatError("closed", "client is closed");
    await this.restore();
    if (this.#connector.closed()) throw new ChatError("closed", "client is closed");
    const session = this.#session;
    let room = session.rooms.get(roomId);
    if (!room) {
      const snap: RoomSnapshot = {};
      const since = opts.sinceSeq === undefined ? 0 : opts.sinceSeq;
      if (since !== null) snap.lastSeq = since;
      room = session.newRoom(roomId, snap);
      session.rooms.set(roomId, room);
      session.persistSoon();
    }
    if (room.joinedOnSocket) return room;
    const r = room;
    const live = new Promise<void>((resolve, reject) => r.joinWaiters.push({ resolve, reject }));
    const conn = this.#connector.conn;
    // During a resume the room is either in it or joined right away.
    if (conn?.hello && r.pendingJoins === 0) this.#resume.sendJoin(conn, r, "join");
    await live;
    return r;
  }

  /** @internal the server frame types the dispatcher handles (unit test against the schemas). */
  handledFrameTypes(): string[] {
    return this.#dispatch.frameTypes();
  }

  // ------------------------------------------------------------ RoomHost

  /** @internal */
  roomSend(room: Room, body: string, clientMsgId?: string): Promise<ServerAck> {
    return this.#pump.enqueue({ room: room.id, kind: "send", body, clientMsgId: clientMsgId ?? uuid() });
  }
  /** @internal */
  roomEdit(room: Room, seq: number, body: string, clientMsgId?: string): Promise<ServerAck> {
    return this.#pump.enqueue({ room: room.id, kind: "edit", body, seq, clientMsgId: clientMsgId ?? uuid() });
  }
  /** @internal */
  roomDelete(room: Room, seq: number, clientMsgId?: string): Promise<ServerAck> {
    return this.#pump.enqueue({ room: room.id, kind: "delete", seq, clientMsgId: clientMsgId ?? uuid() });
  }
  /** @internal */
  roomTyping(room: Room): void {
    const conn = this.#connector.conn;
    if (!conn?.resumed || !room.joinedOnSocket) return;
    const now = Date.now();
    if (now - room.lastTypingAt < TYPING_THROTTLE_MS) return;
    room.lastTypingAt = now;
    conn.sendTyping(room.id);
  }
  /** @internal */
  roomMarkRead(room: Room, seq: number): Promise<void> {
    if (this.#connector.closed()) return Promise.reject(new ChatError("closed", "client is closed"));
    if (room.forgotten) return Promise.reject(new ChatError("closed", "room was left or removed", { room: room.id }));
    room.pendingRead = Math.max(room.pendingRead ?? 0, seq);
    // Optimistic: the badge clears at once; the server's `read` confirms it.
    if (seq > room.readSeq) {
      room.readSeq = seq;
      this.#session.persistSoon();
    }
    const p = new Promise<void>((resolve, reject) => room.readWaiters.push({ seq, resolve, reject }));
    const conn = this.#connector.conn;
    if (conn?.hello && room.joinedOnSocket) conn.sendRead(room);
    return p;
  }
  /** @internal */
  async roomLeave(room: Room): Promise<void> {
    const conn = this.#connector.conn;
    const wasJoined = room.joinedOnSocket;
    this.#session.forgetRoom(room, "left");
    if (conn?.hello && wasJoined && conn.socket.readyState === OPEN) {
      await new Promise<void>((resolve) => {
        const ok = conn.request({ type: "leave", room: room.id }, { kind: "leave", room: room.id, resolve });
        if (!ok) resolve();
      });
    }
  }

  // ------------------------------------------------------------ persistence

  async #doRestore(): Promise<void> {
    const user = await this.#session.storedUser();
    if (!user) return;
    this.#session.userId = user;
    await this.#loadUser(user);
  }

  /** Replaces rooms and outbox with `userId`'s stored state. */
  async #loadUser(userId: string): Promise<void> {
    const state = await this.#session.readState(userId);
    this.#session.apply(state);
    this.#pump.onOutboxLoaded();
  }
}
