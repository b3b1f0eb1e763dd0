/**
 * The outbox pump: sends, edits and deletes queued in the Session's outbox go
 * out in order once a socket is resumed, a window at a time, paced to the
 * send bucket of `hello.limits`; acks settle them, refusals settle or retry
 * them (§6, §8). Owns the promises the app awaits for each entry.
 */
import { fullJitter } from "./backoff.js";
import { ChatError } from "./errors.js";
import type { ClientFrame, ServerAck } from "./generated/protocol.js";
import type { OutboxEntry } from "./outbox.js";
import type { Session } from "./session.js";
import { serves, utf8Length, type Connection, type Log } from "./wire.js";

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
/** Requests in flight at once from the outbox; 1 after a rate limit, to keep order. */
const OUTBOX_WINDOW = 16;

interface Deferred<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

/** What the pump needs from the client around it. */
export interface PumpDeps {
  session: Session;
  /** The current socket, if any. */
  conn(): Connection | undefined;
  closed(): boolean;
  /** The outbox size changed (the client's `outbox` event). */
  onSize(size: number): void;
  /** An error not tied to one pending call (the client's `error` event). */
  onError(err: ChatError): void;
  log: Log;
  random: () => number;
}

export class Pump {
  readonly #sendWaiters = new Map<string, Array<Deferred<ServerAck>>>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #pausedUntil = 0;
  /** One entry in flight at a time, after a refusal, until the outbox empties. */
  #careful = false;

  constructor(readonly deps: PumpDeps) {}

  /** Queues an entry (unless one with its clientMsgId is queued) and resolves with its ack. */
  enqueue(entry: OutboxEntry): Promise<ServerAck> {
    if (this.deps.closed()) return Promise.reject(new ChatError("closed", "client is closed"));
    const outbox = this.deps.session.outbox;
    const p = new Promise<ServerAck>((resolve, reject) => {
      const list = this.#sendWaiters.get(entry.clientMsgId) ?? [];
      list.push({ resolve, reject });
      this.#sendWaiters.set(entry.clientMsgId, list);
    });
    if (outbox.add(entry)) {
      this.deps.session.persistSoon();
      this.deps.onSize(outbox.size);
      this.pump();
    }
    return p;
  }

  /** Sends outbox entries in order, a window at a time, once the resume is done. */
  pump(): void {
    const conn = this.deps.conn();
    if (!conn?.resumed || this.deps.closed()) return;
    const outbox = this.deps.session.outbox;
    const now = Date.now();
    if (this.#pausedUntil > now) {
      this.#wake(this.#pausedUntil - now);
      return;
    }
    const window = this.#careful ? 1 : OUTBOX_WINDOW;
    const edits = serves(conn.hello, "edit");
    const deletes = serves(conn.hello, "delete");
    const maxBody = conn.hello?.limits?.max_body_bytes;
    for (const e of outbox.unsent()) {
      if (outbox.inflightCount >= window) break;
      if (e.body !== undefined && maxBody !== undefined && utf8Length(e.body) > maxBody) {
        // Refused locally: the server would answer too_large anyway, and a
        // frame over max_frame_bytes would close the socket (1009) on every
        // re-send.
        this.#settle(e.clientMsgId, new ChatError("too_large", `body over ${maxBody} bytes`, { room: e.room }));
        continue;
      }
      let frame: ClientFrame;
      if (e.kind === "send") {
        frame = { type: "send", room: e.room, body: e.body ?? "", client_msg_id: e.clientMsgId };
      } else if (e.kind === "edit" ? !edits : !deletes) {
        const what = e.kind === "edit" ? "edits (none listed in hello.features, or the edit window is 0)" : "deletes";
        this.#settle(e.clientMsgId, new ChatError("bad_request", `this server does not serve ${what}`, { room: e.room }));
        continue;
      } else if (e.kind === "edit") {
        frame = { type: "edit", room: e.room, target_seq: e.seq ?? 0, body: e.body ?? "", client_msg_id: e.clientMsgId };
      } else {
        frame = { type: "delete", room: e.room, target_seq: e.seq ?? 0, client_msg_id: e.clientMsgId };
      }
      if (!conn.sendBucket.take()) {
        // Paced to hello.limits: the next entry goes when a token is there.
        this.#wake(conn.sendBucket.waitMs());
        break;
      }
      const id = conn.ids.next("o");
      if (!conn.send({ ...frame, id } as ClientFrame)) break;
      conn.requests.set(id, { kind: "out", clientMsgId: e.clientMsgId, room: e.room });
      outbox.markInflight(e.clientMsgId, id);
    }
  }

  /** Pumps again after `ms`, unless a wake-up is already set. */
  #wake(ms: number): void {
    if (this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.pump();
    }, ms);
  }

  /** An entry is stored: its promises resolve and the next entries go. */
  onAck(a: ServerAck): void {
    const outbox = this.deps.session.outbox;
    const entry = outbox.remove(a.client_msg_id);
    if (!entry) return;
    if (outbox.size === 0) this.#careful = false;
    for (const w of this.#sendWaiters.get(a.client_msg_id) ?? []) w.resolve(a);
    this.#sendWaiters.delete(a.client_msg_id);
    this.deps.session.persistSoon();
    this.deps.onSize(outbox.size);
    this.pump();
  }

  /** The server refused an entry: settle it for good, or retry it later with the same id. */
  onRefused(conn: Connection, clientMsgId: string, err: ChatError): void {
    const { session } = this.deps;
    session.outbox.clearInflight(clientMsgId);
    if (!session.outbox.has(clientMsgId)) return;
    if (DEFINITIVE_SEND_ERRORS.has(err.code)) {
      const room = session.outbox.get(clientMsgId)?.room;
      this.#settle(clientMsgId, err);
      // forbidden: not a member (§6): the room is dropped like a refused join.
      const wanted = err.code === "forbidden" && room !== undefined ? session.rooms.get(room) : undefined;
      if (wanted) session.forgetRoom(wanted, "removed");
      this.pump();
      return;
    }
    // rate_limited: wait as told and re-send, in order, one at a time for a
    // while (§8). internal/unavailable/unknown: retry later with the same id.
    let delay: number;
    if (err.code === "rate_limited") {
      delay = err.retryAfterMs ?? 1000;
      // The server's bucket is empty: so is ours, from here it refills at the announced rate.
      conn.sendBucket.tokens = 0;
      this.deps.onError(err);
    } else {
      delay = 500 + fullJitter(2, {}, this.deps.random);
      this.deps.log("warn", `send failed (${err.code}); retrying`, { clientMsgId });
    }
    this.#careful = true;
    this.#pausedUntil = Math.max(this.#pausedUntil, Date.now() + delay);
    if (conn.live) this.pump();
  }

  /** The socket is gone: entries in flight go again on the next one. */
  onSocketLost(): void {
    this.deps.session.outbox.resetInflight();
    this.stop();
  }

  /** Cancels a pending wake-up. */
  stop(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** The client closed: every promise of the outbox is rejected (the entries stay in the store). */
  rejectAll(err: Error): void {
    for (const waiters of this.#sendWaiters.values()) for (const w of waiters) w.reject(err);
    this.#sendWaiters.clear();
  }

  /** The outbox was replaced by another user's: promises of entries not in it are rejected. */
  onOutboxLoaded(): void {
    const outbox = this.deps.session.outbox;
    for (const id of [...this.#sendWaiters.keys()]) {
      if (!outbox.has(id)) {
        for (const w of this.#sendWaiters.get(id) ?? []) w.reject(new ChatError("closed", "user changed"));
        this.#sendWaiters.delete(id);
      }
    }
    this.deps.onSize(outbox.size);
  }

  /** Removes an entry refused for good and rejects its promises. */
  #settle(clientMsgId: string, err: ChatError): void {
    const outbox = this.deps.session.outbox;
    outbox.remove(clientMsgId);
    for (const w of this.#sendWaiters.get(clientMsgId) ?? []) w.reject(err);
    this.#sendWaiters.delete(clientMsgId);
    if (outbox.size === 0) this.#careful = false;
    this.deps.session.persistSoon();
    this.deps.onSize(outbox.size);
  }
}
