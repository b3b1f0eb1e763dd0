/**
 * What outlives a socket: the signed-in user, the rooms the app wants, the
 * outbox, and their persistence in the app's Store (§12.1). Plain state with
 * its bookkeeping; it knows nothing of sockets, and every other part of the
 * client reads and changes it through here.
 */
import { ChatError } from "./errors.js";
import { Outbox, type OutboxEntry } from "./outbox.js";
import { Room, type RemovedReason, type RoomHost, type RoomSnapshot } from "./room.js";
import type { Store } from "./store.js";
import type { Log } from "./wire.js";

const STORE_USER_KEY = "user";
const stateKey = (userId: string) => `state:${userId}`;

/** The stored state of one user (one key per user: another user's sign-in never mixes them). */
export interface PersistedState {
  v: 1;
  rooms: Record<string, RoomSnapshot>;
  outbox: OutboxEntry[];
}

export class Session {
  userId: string | undefined;
  readonly rooms = new Map<string, Room>();
  readonly outbox = new Outbox();
  #saveChain: Promise<void> = Promise.resolve();
  #saveScheduled = false;

  constructor(
    readonly store: Store,
    /** The client, which rooms call back for sends, reads and leaves. */
    readonly host: RoomHost,
    readonly log: Log,
  ) {}

  newRoom(id: string, snap: RoomSnapshot): Room {
    return new Room(id, this.host, snap, (err) => this.log("error", `room ${id} listener threw`, err));
  }

  /** Drops a room from the wanted set (and the store), telling its waiters and listeners. */
  forgetRoom(room: Room, reason: RemovedReason): void {
    if (this.rooms.get(room.id) === room) this.rooms.delete(room.id);
    room.forget(reason, new ChatError(reason === "left" ? "closed" : "forbidden", `room ${reason}`, { room: room.id }));
    this.persistSoon();
  }

  /** The user of the last session in the store, if any. */
  storedUser(): Promise<string | undefined> {
    return this.store.get(STORE_USER_KEY);
  }

  /** Reads `userId`'s stored state (undefined when none or unreadable). */
  async readState(userId: string): Promise<PersistedState | undefined> {
    const raw = await this.store.get(stateKey(userId));
    if (!raw) return undefined;
    try {
      const parsed = JSON.parse(raw) as PersistedState;
      if (parsed && parsed.v === 1) return parsed;
    } catch {
      this.log("warn", "ignoring unreadable stored state");
    }
    return undefined;
  }

  /** Replaces rooms and outbox with a user's stored state (the old rooms are forgotten). */
  apply(state: PersistedState | undefined): void {
    for (const room of this.rooms.values()) room.forget("removed", new ChatError("closed", "user changed"));
    this.rooms.clear();
    for (const [id, snap] of Object.entries(state?.rooms ?? {})) this.rooms.set(id, this.newRoom(id, snap));
    this.outbox.load(state?.outbox ?? []);
  }

  /** Batches writes: one per tick at most, serialized. */
  persistSoon(): void {
    if (this.#saveScheduled) return;
    this.#saveScheduled = true;
    queueMicrotask(() => {
      this.#saveScheduled = false;
      this.#saveChain = this.#saveChain
        .then(() => this.#writeState())
        .catch((err) => this.log("error", "store write failed", err));
    });
  }

  /** Waits until every pending change is written to the store. */
  async flush(): Promise<void> {
    this.#saveChain = this.#saveChain.then(() => this.#writeState());
    await this.#saveChain;
  }

  async #writeState(): Promise<void> {
    const user = this.userId;
    if (!user) return;
    const state: PersistedState = { v: 1, rooms: {}, outbox: this.outbox.list() };
    for (const [id, room] of this.rooms) if (!room.forgotten) state.rooms[id] = room.snapshot();
    await this.store.set(STORE_USER_KEY, user);
    await this.store.set(stateKey(user), JSON.stringify(state));
  }
}
