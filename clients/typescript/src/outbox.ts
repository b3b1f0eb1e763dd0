/**
 * The outbox: sends, edits and deletes not yet acked, in the order the app
 * made them. An entry leaves only on its `ack` or a definitive refusal, so a
 * send survives reconnects and (persisted through the Store) app restarts,
 * always with the same client_msg_id: the server's idempotency makes every
 * re-send safe (protocol §4.3, §12.2 step 6).
 */
export type OutboxKind = "send" | "edit" | "delete";

/** What is persisted per entry (and shown by `client.outbox`). */
export interface OutboxEntry {
  room: string;
  clientMsgId: string;
  kind: OutboxKind;
  /** send/edit: the text. */
  body?: string;
  /** edit/delete: the target message's seq. */
  seq?: number;
}

export class Outbox {
  #entries: OutboxEntry[] = [];
  /** Request id of the frame in flight per clientMsgId (not persisted: per socket). */
  readonly #inflight = new Map<string, string>();

  get size(): number {
    return this.#entries.length;
  }

  /** A snapshot, oldest first. */
  list(): OutboxEntry[] {
    return this.#entries.map((e) => ({ ...e }));
  }

  has(clientMsgId: string): boolean {
    return this.#entries.some((e) => e.clientMsgId === clientMsgId);
  }

  get(clientMsgId: string): OutboxEntry | undefined {
    return this.#entries.find((e) => e.clientMsgId === clientMsgId);
  }

  /**
   * Appends an entry. Returns false (and changes nothing) when an entry with
   * the same clientMsgId is queued already: the same message enqueued twice
   * (e.g. restored from the store and sent again by the app) goes out once.
   */
  add(entry: OutboxEntry): boolean {
    if (this.has(entry.clientMsgId)) return false;
    this.#entries.push({ ...entry });
    return true;
  }

  remove(clientMsgId: string): OutboxEntry | undefined {
    const i = this.#entries.findIndex((e) => e.clientMsgId === clientMsgId);
    if (i < 0) return undefined;
    const [e] = this.#entries.splice(i, 1);
    this.#inflight.delete(clientMsgId);
    return e;
  }

  /** Drops every entry matching `pred` (e.g. a forgotten room); returns them. */
  removeWhere(pred: (e: OutboxEntry) => boolean): OutboxEntry[] {
    const gone = this.#entries.filter(pred);
    this.#entries = this.#entries.filter((e) => !pred(e));
    for (const e of gone) this.#inflight.delete(e.clientMsgId);
    return gone;
  }

  /** Replaces the content (restore from the store), deduplicating by clientMsgId. */
  load(entries: OutboxEntry[]): void {
    this.#entries = [];
    this.#inflight.clear();
    for (const e of entries) this.add(e);
  }

  markInflight(clientMsgId: string, requestId: string): void {
    this.#inflight.set(clientMsgId, requestId);
  }
  clearInflight(clientMsgId: string): void {
    this.#inflight.delete(clientMsgId);
  }
  isInflight(clientMsgId: string): boolean {
    return this.#inflight.has(clientMsgId);
  }
  get inflightCount(): number {
    return this.#inflight.size;
  }
  /** Connection lost: nothing is in flight on the next socket. */
  resetInflight(): void {
    this.#inflight.clear();
  }

  /** Entries not in flight, oldest first: what the pump sends next. */
  unsent(): OutboxEntry[] {
    return this.#entries.filter((e) => !this.#inflight.has(e.clientMsgId));
  }
}
