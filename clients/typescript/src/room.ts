/**
 * One joined room as the client exposes it: its stream of messages and
 * change events in seq order (held while nobody listens), read position
 * and unread count, who is online, and the calls that send, edit, delete,
 * type, mark read and leave through the client.
 */
import { Emitter } from "./emitter.js";
import type {
  ServerAck,
  ServerDelete,
  ServerEdit,
  ServerHistoryGone,
  ServerJoined,
  ServerMessage,
  ServerPresence,
  ServerRead,
  ServerReset,
  ServerTyping,
} from "./generated/protocol.js";

export type RemovedReason = "removed" | "room_deleted" | "left";

/** The events of the room's seq stream, held in order while nobody listens. */
const STREAM_EVENTS = new Set<string>(["message", "edit", "delete", "reset"]);
type StreamEvent = "message" | "edit" | "delete" | "reset";
/** Held stream events beyond this are dropped (an app that never listens). */
const MAX_HELD = 50_000;

export type RoomEvents = {
  /** Every stored message exactly once, in seq order, across reconnects and restarts. */
  message: [ServerMessage];
  /** A change event (§16): apply to the message with seq `target_seq`. */
  edit: [ServerEdit];
  delete: [ServerDelete];
  typing: [ServerTyping];
  read: [ServerRead];
  /** `room.online` is already updated when this fires. */
  presence: [ServerPresence];
  /**
   * §17: `reset` means the local copy of the room must be dropped (another
   * epoch); `history_gone` means seqs below `oldest_seq` will never come (keep
   * what you hold).
   */
  reset: [ServerReset | ServerHistoryGone];
  /** The room is live on the socket (after every join/resume). */
  joined: [ServerJoined];
  /** The room is forgotten (store too): removed by its owner, deleted, or left. */
  removed: [{ reason: RemovedReason }];
};

/** What a Room needs from its client (kept narrow so Room stays testable). */
export interface RoomHost {
  roomSend(room: Room, body: string, clientMsgId?: string): Promise<ServerAck>;
  roomEdit(room: Room, seq: number, body: string, clientMsgId?: string): Promise<ServerAck>;
  roomDelete(room: Room, seq: number, clientMsgId?: string): Promise<ServerAck>;
  roomTyping(room: Room): void;
  roomMarkRead(room: Room, seq: number): Promise<void>;
  roomLeave(room: Room): Promise<void>;
}

/** Persisted per room (§12.1). */
export interface RoomSnapshot {
  lastSeq?: number;
  epoch?: string;
  readSeq?: number;
}

/**
 * One room the client wants: it is joined on every (re)connection and its
 * frames are delivered here deduplicated by seq. Rooms are created by
 * `client.join()` or restored from the store; the same object is returned for
 * the same id until the room is forgotten.
 */
export class Room extends Emitter<RoomEvents> {
  /** Highest seq processed (messages and change events); undefined before the first join. */
  lastSeq: number | undefined;
  /** Epoch of the local copy (§17). */
  epoch: string | undefined;
  /** The user's read marker (from `joined.read_seq`, own `read` frames and markRead). */
  readSeq = 0;
  /** Users with a socket in the room (presence snapshot from `joined`, kept by `presence`). */
  readonly online = new Set<string>();
  /** Joined on the current socket (false while offline or resuming). */
  joinedOnSocket = false;
  /** Forgotten: no more events; a new join() creates a new Room. */
  forgotten = false;

  /** @internal joins/sync entries sent for this room and not yet answered. */
  pendingJoins = 0;
  /** @internal a markRead not yet confirmed by the server. */
  pendingRead: number | undefined;
  /** @internal last typing frame sent (throttle). */
  lastTypingAt = 0;
  /** @internal resolvers of join() calls waiting for the room to be live. */
  joinWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  /** @internal resolvers of markRead() calls. */
  readWaiters: Array<{ seq: number; resolve: () => void; reject: (e: Error) => void }> = [];
  readonly #iterators = new Set<{ push(m: ServerMessage): void; end(): void }>();
  /**
   * Stream events that came while no stream listener was attached. Why: the
   * replay of `await client.join(id)` arrives before join() resolves, i.e.
   * before the app can subscribe; holding it until the first listener keeps
   * "every message exactly once" true for the usual call pattern.
   */
  readonly #held: Array<{ event: StreamEvent; payload: RoomEvents[StreamEvent][0] }> = [];
  #flushScheduled = false;

  constructor(
    readonly id: string,
    private readonly host: RoomHost,
    snapshot: RoomSnapshot = {},
    onListenerError?: (err: unknown) => void,
  ) {
    super();
    this.lastSeq = snapshot.lastSeq;
    this.epoch = snapshot.epoch;
    this.readSeq = snapshot.readSeq ?? 0;
    if (onListenerError) this.onListenerError = (err) => onListenerError(err);
  }

  /** Messages not read yet by the user's marker: lastSeq - readSeq (never negative). */
  get unread(): number {
    return Math.max(0, (this.lastSeq ?? 0) - this.readSeq);
  }

  /** Queues a message in the outbox; resolves with its ack (possibly after reconnects). */
  send(body: string, opts: { clientMsgId?: string } = {}): Promise<ServerAck> {
    return this.host.roomSend(this, body, opts.clientMsgId);
  }
  /**
   * Edits one of the user's messages (§16); acked like a send. Each edit
   * gets a fresh `client_msg_id` (a new UUID); pass `clientMsgId` only to
   * retry this same edit (e.g. after an app restart), never a message's id:
   * ids are one namespace per room and sender, so that is `conflict` (§13.3).
   */
  edit(seq: number, body: string, opts: { clientMsgId?: string } = {}): Promise<ServerAck> {
    return this.host.roomEdit(this, seq, body, opts.clientMsgId);
  }
  /** Deletes a message (§16); acked like a send. A fresh `client_msg_id` per call, as for `edit`. */
  delete(seq: number, opts: { clientMsgId?: string } = {}): Promise<ServerAck> {
    return this.host.roomDelete(this, seq, opts.clientMsgId);
  }
  /** Fire and forget; throttled to one frame per 2 s. */
  typing(): void {
    this.host.roomTyping(this);
  }
  /** Moves the user's read marker forward; resolves when the server confirms it. */
  markRead(seq: number): Promise<void> {
    return this.host.roomMarkRead(this, seq);
  }
  /** Leaves the room on the socket and forgets it (membership is unchanged). */
  leave(): Promise<void> {
    return this.host.roomLeave(this);
  }

  /**
   * The "message" stream as an async iterator, buffered from this call on.
   * Ends when the room is forgotten or the client closed.
   */
  messages(): AsyncIterableIterator<ServerMessage> {
    const buffer: ServerMessage[] = [];
    let waiting: ((r: IteratorResult<ServerMessage>) => void) | undefined;
    let done = false;
    const sink = {
      push: (m: ServerMessage) => {
        if (waiting) {
          const w = waiting;
          waiting = undefined;
          w({ value: m, done: false });
        } else buffer.push(m);
      },
      end: () => {
        done = true;
        this.#iterators.delete(sink);
        if (waiting) {
          const w = waiting;
          waiting = undefined;
          w({ value: undefined, done: true });
        }
      },
    };
    this.#iterators.add(sink);
    this.#scheduleFlush();
    const it: AsyncIterableIterator<ServerMessage> = {
      next: () => {
        const m = buffer.shift();
        if (m) return Promise.resolve({ value: m, done: false });
        if (done || this.forgotten) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          waiting = resolve;
        });
      },
      return: () => {
        sink.end();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it;
  }

  /** @internal */
  snapshot(): RoomSnapshot {
    const s: RoomSnapshot = { readSeq: this.readSeq };
    if (this.lastSeq !== undefined) s.lastSeq = this.lastSeq;
    if (this.epoch !== undefined) s.epoch = this.epoch;
    return s;
  }

  override on<K extends keyof RoomEvents>(event: K, listener: (...args: RoomEvents[K]) => void): () => void {
    const off = super.on(event, listener);
    if (STREAM_EVENTS.has(event)) this.#scheduleFlush();
    return off;
  }

  #hasStreamListener(): boolean {
    return (
      this.#iterators.size > 0 ||
      this.listenerCount("message") + this.listenerCount("edit") + this.listenerCount("delete") + this.listenerCount("reset") > 0
    );
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#held.length === 0) return;
    this.#flushScheduled = true;
    // A microtask, so that an app adding its message, edit and delete
    // listeners one after the other gets each held event by its listener.
    queueMicrotask(() => {
      this.#flushScheduled = false;
      while (this.#held.length > 0 && this.#hasStreamListener()) {
        const h = this.#held.shift()!;
        this.#dispatch(h.event, h.payload);
      }
    });
  }

  #dispatch(event: StreamEvent, payload: RoomEvents[StreamEvent][0]): void {
    (this.emit as (e: StreamEvent, p: unknown) => void)(event, payload);
    if (event === "message") for (const it of [...this.#iterators]) it.push(payload as ServerMessage);
  }

  /** @internal delivers a processed stream event (message, edit, delete, reset), in seq order. */
  deliver<K extends StreamEvent>(event: K, payload: RoomEvents[K][0]): void {
    if (this.#held.length > 0 || !this.#hasStreamListener()) {
      if (this.#held.length >= MAX_HELD) this.#held.shift();
      this.#held.push({ event, payload });
      if (this.#hasStreamListener()) this.#scheduleFlush();
      return;
    }
    this.#dispatch(event, payload);
  }

  /** @internal */
  fire<K extends keyof RoomEvents>(event: K, ...args: RoomEvents[K]): void {
    this.emit(event, ...args);
  }

  /** @internal the room is forgotten: end iterators, fail waiters. */
  forget(reason: RemovedReason, err: Error): void {
    if (this.forgotten) return;
    this.forgotten = true;
    this.joinedOnSocket = false;
    for (const w of this.joinWaiters.splice(0)) w.reject(err);
    for (const w of this.readWaiters.splice(0)) w.reject(err);
    this.emit("removed", { reason });
    for (const it of [...this.#iterators]) it.end();
  }

  /** @internal client closed: end iterators. */
  endIterators(): void {
    for (const it of [...this.#iterators]) it.end();
  }
}
