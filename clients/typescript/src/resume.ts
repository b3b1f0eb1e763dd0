/**
 * Resume (§12.2): on every socket, every wanted room is resumed from its
 * lastSeq (bulk `sync` when the server has it, else one paced `join` each);
 * then the stream of each room goes through the sequencer (`classify`), and
 * a gap, or a replay that ended short of `joined.last_seq`, re-joins the room
 * from lastSeq. Also the other answers about a room's place in its history:
 * `history_gone` and `reset` (§17). When every room of the resume is
 * answered, `onResumed` lets the outbox go.
 */
import { fullJitter } from "./backoff.js";
import type { ChatError } from "./errors.js";
import type {
  ServerDelete,
  ServerEdit,
  ServerError,
  ServerHistoryGone,
  ServerJoined,
  ServerMessage,
  ServerReset,
  ServerSynced,
} from "./generated/protocol.js";
import type { Room } from "./room.js";
import { classify } from "./sequencer.js";
import type { Session } from "./session.js";
import { utf8Length, type Connection, type Log, type PendingRequest } from "./wire.js";

/** Errors after which a room cannot be joined (it is dropped from the resume set). */
const DEFINITIVE_JOIN_ERRORS = new Set(["forbidden", "not_found", "limit_exceeded", "bad_request"]);
/** A resume not fully answered by then no longer holds the outbox back. */
const RESUME_WATCHDOG_MS = 30_000;

/** A gap in a room's stream that made the client re-join from `lastSeq` (§12.2 step 5). */
export interface GapInfo {
  room: string;
  /** The highest seq processed when the gap was seen. */
  lastSeq: number | undefined;
  /** The frame's seq beyond lastSeq + 1, or the `joined.last_seq` a replay fell short of. */
  seq: number;
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

/** What the resume needs from the client around it. */
export interface ResumeDeps {
  session: Session;
  /** Every room of the resume is answered (or the watchdog fired) on `conn`. */
  onResumed(conn: Connection): void;
  /** A gap was found and is being filled (the client's `gap` event). */
  onGap(info: GapInfo): void;
  /** An error not tied to one pending call (the client's `error` event). */
  onError(err: ChatError): void;
  log: Log;
  random: () => number;
}

export class Resumer {
  /** Re-joins made to fill a gap since the client was made. */
  gapRecoveries = 0;

  constructor(readonly deps: ResumeDeps) {}

  /** Resumes every wanted room on a socket that just got its hello. */
  resume(conn: Connection): void {
    const rooms = [...this.deps.session.rooms.values()].filter((r) => !r.forgotten);
    conn.resumeOutstanding = 0;
    // Safety net: the outbox waits for the resume only to keep replays ahead
    // of re-sends; if an answer never comes, send anyway (re-sends are
    // idempotent and messages are deduplicated by seq).
    conn.timer(RESUME_WATCHDOG_MS, () => {
      if (!conn.resumed) {
        this.deps.log("warn", "resume not answered in time; sending the outbox anyway");
        this.#done(conn);
      }
    });
    if (rooms.length === 0) {
      this.#done(conn);
      return;
    }
    if (conn.features().includes("sync")) this.#sync(conn, rooms);
    else this.#joinEach(conn, rooms);
  }

  #sync(conn: Connection, rooms: Room[]): void {
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
      for (const e of entries) this.deps.session.rooms.get(e.room)!.pendingJoins++;
      conn.resumeOutstanding++;
      conn.request({ type: "sync", rooms: entries }, { kind: "sync", rooms: entries.map((e) => e.room) });
    }
  }

  /**
   * One join per room (1.0 server). Paced to half the events bucket: a
   * burst of hundreds of joins would be rate limited, and 50 refusals in a
   * row close the socket with 4008.
   */
  #joinEach(conn: Connection, rooms: Room[]): void {
    const limits = conn.hello?.limits;
    const first = Math.max(1, Math.floor((limits?.events_burst ?? 100) / 2));
    const perSecond = Math.max(1, Math.floor((limits?.events_per_sec ?? 50) / 2));
    conn.resumeOutstanding = rooms.length;
    let next = 0;
    const batch = (n: number) => {
      for (let k = 0; k < n && next < rooms.length; k++) {
        const r = rooms[next++]!;
        if (r.forgotten || this.deps.session.rooms.get(r.id) !== r) this.#step(conn);
        else this.sendJoin(conn, r, "resume-join");
      }
      if (next < rooms.length) conn.timer(1_000, () => batch(perSecond));
    };
    batch(first);
  }

  /** One room (or sync frame) of the resume answered. */
  #step(conn: Connection): void {
    if (conn.resumed) return;
    conn.resumeOutstanding--;
    if (conn.resumeOutstanding <= 0) this.#done(conn);
  }

  #done(conn: Connection): void {
    if (conn.resumed || !conn.live) return;
    conn.resumed = true;
    this.deps.log("debug", "resumed");
    this.deps.onResumed(conn);
  }

  /** Joins a room from its lastSeq (and epoch, to a 1.1 server). */
  sendJoin(conn: Connection, room: Room, kind: "join" | "resume-join"): void {
    const f: { type: "join"; room: string; since_seq?: number; epoch?: string } = { type: "join", room: room.id };
    if (room.lastSeq !== undefined) f.since_seq = room.lastSeq;
    if (room.epoch !== undefined && room.lastSeq !== undefined && conn.is11()) f.epoch = room.epoch;
    room.pendingJoins++;
    conn.request(f, { kind, room: room.id });
  }

  onJoined(conn: Connection, j: ServerJoined): void {
    const { session } = this.deps;
    const req = conn.takeRequest(j.id);
    const room = session.rooms.get(j.room);
    if (!room || room.forgotten) {
      if (req?.kind === "resume-join") this.#step(conn);
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
      this.sendJoin(conn, room, "join");
    }
    room.joinedOnSocket = true;
    session.persistSoon();
    for (const w of room.joinWaiters.splice(0)) w.resolve();
    room.fire("joined", j);
    if (room.pendingRead !== undefined) conn.sendRead(room);
    if (req?.kind === "resume-join") this.#step(conn);
  }

  onSynced(conn: Connection, s: ServerSynced): void {
    const req = conn.takeRequest(s.id);
    if (req?.kind === "sync") this.#step(conn);
  }

  onHistoryGone(h: ServerHistoryGone): void {
    const room = this.deps.session.rooms.get(h.room);
    if (!room || room.forgotten) return;
    // Seqs below oldest_seq will never come: treat them as processed (§17.1).
    const target = h.oldest_seq - 1;
    if (room.lastSeq === undefined || room.lastSeq < target) room.lastSeq = target;
    this.deps.session.persistSoon();
    room.deliver("reset", h);
  }

  onReset(r: ServerReset): void {
    const room = this.deps.session.rooms.get(r.room);
    if (!room || room.forgotten) return;
    // Another history: the local copy is void (§17.2).
    room.lastSeq = r.last_seq;
    room.epoch = r.epoch;
    this.deps.session.persistSoon();
    room.deliver("reset", r);
  }

  /** A frame of a room's seq stream: delivered once, in order; a gap re-joins. */
  onStream(conn: Connection, f: ServerMessage | ServerEdit | ServerDelete): void {
    const room = this.deps.session.rooms.get(f.room);
    if (!room || room.forgotten) return;
    const v = classify(room.lastSeq, f.seq);
    if (v === "duplicate") return;
    if (v === "gap") {
      this.deps.log("warn", "gap in room stream; re-joining", { room: f.room, lastSeq: room.lastSeq, seq: f.seq });
      if (room.pendingJoins === 0) {
        this.#gapRecovery(room, f.seq);
        this.sendJoin(conn, room, "join");
      }
      return;
    }
    room.lastSeq = f.seq;
    if (f.type === "message") room.deliver("message", f);
    else if (f.type === "edit") room.deliver("edit", f);
    else room.deliver("delete", f);
    this.deps.session.persistSoon();
  }

  /** Counts and announces a re-join made to fill a gap (tests assert where they happen). */
  #gapRecovery(room: Room, seq: number): void {
    this.gapRecoveries++;
    this.deps.onGap({ room: room.id, lastSeq: room.lastSeq, seq });
  }

  /** A per-room answer of a sync refused that room (the error has `room`, no id). */
  onSyncEntryError(conn: Connection, room: Room, err: ChatError): void {
    room.pendingJoins--;
    this.#onJoinError(conn, room, err, "sync-entry");
  }

  /** A join (plain or of a resume) was refused. */
  onJoinRefused(conn: Connection, req: PendingRequest, err: ChatError): void {
    const room = req.room !== undefined ? this.deps.session.rooms.get(req.room) : undefined;
    if (room) room.pendingJoins = Math.max(0, room.pendingJoins - 1);
    if (room) this.#onJoinError(conn, room, err, req.kind === "join" ? "join" : "resume-join");
    else if (req.kind === "resume-join") this.#step(conn);
  }

  /** The whole sync was refused: fall back to per-room joins. */
  onSyncRefused(conn: Connection, req: PendingRequest, e: ServerError, err: ChatError): void {
    if (e.code === "rate_limited") this.deps.onError(err);
    const delay = e.code === "rate_limited" ? (e.retry_after_ms ?? 1000) : 0;
    this.deps.log("warn", "sync refused; joining rooms one by one", e);
    const rooms = (req.rooms ?? []).map((id) => this.deps.session.rooms.get(id)).filter((r): r is Room => !!r);
    for (const r of rooms) r.pendingJoins = Math.max(0, r.pendingJoins - 1);
    conn.timer(delay, () => {
      conn.resumeOutstanding += rooms.length;
      for (const r of rooms) if (!r.forgotten) this.sendJoin(conn, r, "resume-join");
      else conn.resumeOutstanding--;
      this.#step(conn);
    });
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
      if (code === "rate_limited") this.deps.onError(err);
      const delay = err.retryAfterMs ?? 500 + fullJitter(2, {}, this.deps.random);
      conn.timer(delay, () => {
        if (!room.forgotten) this.sendJoin(conn, room, kind === "resume-join" ? "resume-join" : "join");
        else if (kind === "resume-join") this.#step(conn);
      });
      return;
    }
    // forbidden (not a member / no such room), not_found, limit_exceeded...:
    // the room cannot be joined; drop it from the resume set (§6).
    this.deps.log("warn", `cannot join ${room.id}: ${code}`);
    for (const w of room.joinWaiters.splice(0)) w.reject(err);
    this.deps.session.forgetRoom(room, "removed");
    if (kind === "resume-join") this.#step(conn);
  }
}
