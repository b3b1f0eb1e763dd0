/**
 * Dispatch: an incoming frame becomes state, store writes and events. One
 * handler per server frame type of the schemas (a unit test checks the table
 * against them); room-stream and join answers go to the resume, acks and
 * send refusals to the pump, and the socket's own frames (hello, auth_ok, a
 * refused renewal) to the connection through `Lifecycle`.
 */
import { ChatError } from "./errors.js";
import type {
  ServerAuthOk,
  ServerError,
  ServerFrame,
  ServerFrameType,
  ServerHello,
  ServerLeft,
  ServerPresence,
  ServerRead,
  ServerRoomAdded,
  ServerRoomRemoved,
  ServerRoomSeq,
  ServerRoomUpdated,
  ServerTyping,
} from "./generated/protocol.js";
import type { Pump } from "./pump.js";
import type { Resumer } from "./resume.js";
import type { RemovedReason } from "./room.js";
import type { Session } from "./session.js";
import type { Connection, Log } from "./wire.js";

/** The frames that belong to the socket's lifecycle (handled by the connection). */
export interface Lifecycle {
  onHello(conn: Connection, h: ServerHello): void;
  onAuthOk(conn: Connection, a: ServerAuthOk): void;
  /** The server refused a renewal (`auth`). */
  onAuthRefused(conn: Connection, e: ServerError, err: ChatError): void;
}

/** The client's events that frames raise directly. */
export interface DispatchEvents {
  error(err: ChatError): void;
  roomAdded(f: ServerRoomAdded): void;
  roomRemoved(f: ServerRoomRemoved): void;
  roomUpdated(f: ServerRoomUpdated): void;
  roomSeq(f: ServerRoomSeq): void;
}

/** What dispatch needs from the client around it. */
export interface DispatchDeps {
  session: Session;
  resume: Resumer;
  pump: Pump;
  lifecycle: Lifecycle;
  events: DispatchEvents;
  log: Log;
}

type Handlers = { [K in ServerFrameType]: (conn: Connection, f: Extract<ServerFrame, { type: K }>) => void };

export class Dispatcher {
  constructor(readonly deps: DispatchDeps) {}

  /** The server frame types handled (unit test against the schemas). */
  frameTypes(): string[] {
    return Object.keys(this.#handlers);
  }

  /** One frame as it came off the socket: parsed, checked, handed to its handler. */
  onData(conn: Connection, data: unknown): void {
    const { log } = this.deps;
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
      log("warn", "ignoring a frame that is not JSON");
      return;
    }
    if (!frame || typeof frame !== "object" || typeof (frame as { type?: unknown }).type !== "string") {
      log("warn", "ignoring a frame without type");
      return;
    }
    const f = frame as ServerFrame;
    const handler = (this.#handlers as Record<string, ((c: Connection, f: ServerFrame) => void) | undefined>)[f.type];
    // §3: frames of unknown types (a later 1.x server) are ignored.
    if (!handler) {
      log("debug", `ignoring unknown frame type ${f.type}`);
      return;
    }
    if (!conn.hello && f.type !== "hello") {
      log("warn", `frame ${f.type} before hello ignored`);
      return;
    }
    try {
      handler(conn, f);
    } catch (err) {
      log("error", `handling ${f.type} failed`, err);
    }
  }

  /** The dispatcher: one entry per server frame type of the schemas (checked by a unit test). */
  readonly #handlers: Handlers = {
    hello: (c, f) => this.deps.lifecycle.onHello(c, f),
    joined: (c, f) => this.deps.resume.onJoined(c, f),
    synced: (c, f) => this.deps.resume.onSynced(c, f),
    history_gone: (_c, f) => this.deps.resume.onHistoryGone(f),
    reset: (_c, f) => this.deps.resume.onReset(f),
    left: (c, f) => this.#onLeft(c, f),
    ack: (c, f) => {
      c.takeRequest(f.id);
      this.deps.pump.onAck(f);
    },
    message: (c, f) => this.deps.resume.onStream(c, f),
    edit: (c, f) => this.deps.resume.onStream(c, f),
    delete: (c, f) => this.deps.resume.onStream(c, f),
    typing: (_c, f) => this.#onTyping(f),
    read: (c, f) => this.#onRead(c, f),
    presence: (_c, f) => this.#onPresence(f),
    pong: (c, f) => {
      if (f.id !== undefined) c.requests.delete(String(f.id));
    },
    auth_ok: (c, f) => this.deps.lifecycle.onAuthOk(c, f),
    error: (c, f) => this.#onError(c, f),
    ping: (c) => c.send({ type: "pong" }),
    room_added: (_c, f) => this.deps.events.roomAdded(f),
    room_removed: (_c, f) => this.#onRoomRemoved(f),
    room_updated: (_c, f) => this.deps.events.roomUpdated(f),
    room_seq: (_c, f) => this.deps.events.roomSeq(f),
  };

  #onTyping(t: ServerTyping): void {
    const { session } = this.deps;
    if (t.user === session.userId) return; // own other device (§5.6)
    session.rooms.get(t.room)?.fire("typing", t);
  }

  #onRead(conn: Connection, r: ServerRead): void {
    const { session } = this.deps;
    const room = session.rooms.get(r.room);
    if (!room || room.forgotten) return;
    if (r.user === session.userId) {
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
      session.persistSoon();
    }
    room.fire("read", r);
  }

  #onPresence(p: ServerPresence): void {
    const room = this.deps.session.rooms.get(p.room);
    if (!room || room.forgotten) return;
    if (p.status === "online") room.online.add(p.user);
    else room.online.delete(p.user);
    room.fire("presence", p);
  }

  #onLeft(conn: Connection, l: ServerLeft): void {
    const req = conn.takeRequest(l.id);
    if (req?.kind === "leave") {
      req.resolve?.();
      return;
    }
    if (l.reason === "requested") return;
    const room = this.deps.session.rooms.get(l.room);
    if (!room) return;
    // Removed or room deleted (unknown reasons count as removed, §19.3).
    this.deps.session.forgetRoom(room, l.reason === "room_deleted" ? "room_deleted" : "removed");
  }

  #onRoomRemoved(f: ServerRoomRemoved): void {
    const room = this.deps.session.rooms.get(f.room);
    if (room) {
      const reason: RemovedReason = f.reason === "left" || f.reason === "room_deleted" ? f.reason : "removed";
      this.deps.session.forgetRoom(room, reason);
    }
    this.deps.events.roomRemoved(f);
  }

  /** An error frame: matched to its request by id and handed to whoever sent it. */
  #onError(conn: Connection, e: ServerError): void {
    const { session, resume, pump, events } = this.deps;
    const req = conn.takeRequest(e.id);
    const err = ChatError.fromFrame(e);
    if (!req) {
      // Per-room answers of a sync carry `room` but no id.
      if (e.room !== undefined) {
        const room = session.rooms.get(e.room);
        if (room && room.pendingJoins > 0) {
          resume.onSyncEntryError(conn, room, err);
          return;
        }
      }
      this.deps.log("warn", "server error", e);
      events.error(err);
      return;
    }
    switch (req.kind) {
      case "out":
        pump.onRefused(conn, req.clientMsgId!, err);
        return;
      case "join":
      case "resume-join":
        resume.onJoinRefused(conn, req, err);
        return;
      case "sync":
        resume.onSyncRefused(conn, req, e, err);
        return;
      case "read": {
        const room = req.room !== undefined ? session.rooms.get(req.room) : undefined;
        if (!room) return;
        if (e.code === "rate_limited") {
          events.error(err);
          conn.timer(e.retry_after_ms ?? 1000, () => conn.sendRead(room));
        } else if (e.code === "not_joined") {
          // Re-sent after the room's next `joined`.
        } else {
          room.pendingRead = undefined;
          for (const w of room.readWaiters.splice(0)) w.reject(err);
        }
        return;
      }
      case "auth":
        this.deps.lifecycle.onAuthRefused(conn, e, err);
        return;
      case "ping":
      case "leave":
        if (req.kind === "leave") req.resolve?.();
        events.error(err);
        return;
    }
  }
}
