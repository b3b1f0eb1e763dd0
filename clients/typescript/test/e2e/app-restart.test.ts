/**
 * App restart: the app's ChatClient goes away with unacked sends in its
 * outbox (the gateway is down at the time), and a new ChatClient over the
 * same persisted store resumes the room from the stored lastSeq (no
 * re-delivery of what was processed, nothing lost) and re-sends the outbox
 * with the same client_msg_ids. Run with three stores: the same MemoryStore
 * instance, a file-backed Store read back by a new instance, and
 * LocalStorageStore over a localStorage shim.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { LocalStorageStore, MemoryStore, type Store } from "../../src/index.ts";
import { Api, RoomLog, assertExactSeqs, e2e, eventually, uniq, waitState, type Harness } from "../harness.ts";

/** A Store persisted to a JSON file on every write: what a Node app would use across process restarts. */
class FileStore implements Store {
  constructor(private readonly path: string) {}
  private read(): Record<string, string> {
    return existsSync(this.path) ? (JSON.parse(readFileSync(this.path, "utf8")) as Record<string, string>) : {};
  }
  async get(key: string): Promise<string | undefined> {
    return this.read()[key];
  }
  async set(key: string, value: string): Promise<void> {
    const all = this.read();
    all[key] = value;
    writeFileSync(this.path, JSON.stringify(all));
  }
  async delete(key: string): Promise<void> {
    const all = this.read();
    delete all[key];
    writeFileSync(this.path, JSON.stringify(all));
  }
}

/** The browser's localStorage, enough of it for LocalStorageStore; outlives the store instances like the real one. */
class LocalStorageShim {
  private readonly data = new Map<string, string>();
  get length(): number {
    return this.data.size;
  }
  key(i: number): string | null {
    return [...this.data.keys()][i] ?? null;
  }
  getItem(k: string): string | null {
    return this.data.get(k) ?? null;
  }
  setItem(k: string, v: string): void {
    this.data.set(k, String(v));
  }
  removeItem(k: string): void {
    this.data.delete(k);
  }
  clear(): void {
    this.data.clear();
  }
  values(): string[] {
    return [...this.data.values()];
  }
}

/** Forwards to a store and remembers what was written, so the test can wait until the outbox is persisted. */
class SpyStore implements Store {
  readonly written = new Map<string, string>();
  constructor(private readonly inner: Store) {}
  get(key: string): Promise<string | undefined> {
    return this.inner.get(key);
  }
  async set(key: string, value: string): Promise<void> {
    this.written.set(key, value);
    await this.inner.set(key, value);
  }
  async delete(key: string): Promise<void> {
    this.written.delete(key);
    await this.inner.delete(key);
  }
  contains(text: string): boolean {
    return [...this.written.values()].some((v) => v.includes(text));
  }
}

async function appRestart(h: Harness, makeStore: (life: 1 | 2) => Store): Promise<void> {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("restart"), [bob]);

  // First life of Ann's app.
  const store1 = new SpyStore(makeStore(1));
  const a1 = h.client(api, ann, { url: gw.wsUrl, store: store1 });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a1.client.connect(), b.client.connect()]);
  const a1Room = await a1.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const a1Log = new RoomLog(a1Room);
  const bLog = new RoomLog(bRoom);
  for (const body of ["b1", "b2", "b3"]) await bRoom.send(body);
  await a1Log.waitCount(3);
  assertExactSeqs(a1Log.seqs, 1, 3, "ann, first life");
  await a1Room.markRead(2);

  // The gateway goes down; Ann writes two messages (outbox), then her app quits.
  await gw.kill();
  await eventually("ann notices the outage", () => a1.client.state !== "online");
  const unacked = [a1Room.send("x1"), a1Room.send("x2")];
  for (const p of unacked) p.catch(() => undefined); // the first life never sees these acks
  await eventually("the outbox is persisted", () => store1.contains("x2"), { state: () => [...store1.written.keys()] });
  const queuedIds = a1.client.outbox.map((e) => e.clientMsgId);
  assert.equal(queuedIds.length, 2);
  a1.client.close();
  assert.equal(a1.client.state, "closed");

  // While Ann's app is gone, the gateway returns and Bob writes two more.
  await gw.start();
  await waitState(b.client, "online");
  await bRoom.send("b4");
  await bRoom.send("b5");

  // Second life: a new ChatClient over the same persisted data.
  const store2 = makeStore(2);
  const a2 = h.client(api, ann, { url: gw.wsUrl, store: store2 });
  await a2.client.restore();
  const a2Room = a2.client.room(roomId);
  assert.ok(a2Room, "the room is restored from the store");
  assert.equal(a2Room.lastSeq, 3, "lastSeq restored");
  assert.equal(a2Room.readSeq, 2, "read marker restored");
  assert.equal(a2Room.unread, 1);
  assert.deepEqual(
    a2.client.outbox.map((e) => [e.clientMsgId, e.body]),
    [
      [queuedIds[0], "x1"],
      [queuedIds[1], "x2"],
    ],
    "the outbox is restored with the same client_msg_ids",
  );
  const a2Log = new RoomLog(a2Room);
  await a2.client.connect();
  await eventually("the restored outbox is acked", () => a2.client.outbox.length === 0, {
    state: () => a2.client.outbox,
  });

  // Ann's second life: only what she had not processed, exactly once, in order.
  await a2Log.waitCount(4);
  assertExactSeqs(a2Log.seqs, 4, 7, "ann, second life");
  assert.deepEqual(a2Log.bodies, ["b4", "b5", "x1", "x2"]);
  assert.deepEqual(
    a2Log.messages.filter((m) => m.sender === ann.id).map((m) => m.client_msg_id),
    queuedIds,
    "re-sent with the same client_msg_ids",
  );
  // Bob: everything exactly once.
  await bLog.waitCount(7);
  assertExactSeqs(bLog.seqs, 1, 7, "bob");
  assert.deepEqual(bLog.bodies, ["b1", "b2", "b3", "b4", "b5", "x1", "x2"]);
  const history = await api.history(bob, roomId);
  assert.deepEqual(
    history.map((m) => m.body),
    ["b1", "b2", "b3", "b4", "b5", "x1", "x2"],
    "stored once each",
  );
  assert.equal(a2Room.lastSeq, 7);
  assert.equal(a2Room.readSeq, 2, "the server's read_seq agrees");
  assert.equal(a2Room.unread, 5);
}

e2e("app restart with the same MemoryStore instance resumes and re-sends the outbox", async (h) => {
  const mem = new MemoryStore();
  await appRestart(h, () => mem);
});

e2e("app restart with a file-backed store (new instance) resumes and re-sends the outbox", async (h) => {
  const dir = mkdtempSync(join(tmpdir(), "chatgw-sdk-store-"));
  h.onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "store.json");
  await appRestart(h, () => new FileStore(path));
});

e2e("app restart with LocalStorageStore over a localStorage shim resumes and re-sends the outbox", async (h) => {
  const shim = new LocalStorageShim();
  const g = globalThis as { localStorage?: unknown };
  const before = g.localStorage;
  g.localStorage = shim;
  h.onCleanup(() => {
    g.localStorage = before;
  });
  await appRestart(h, () => new LocalStorageStore());
  assert.ok(shim.length > 0, "LocalStorageStore wrote to localStorage");
});

e2e(
  "app dies with a send in flight (gateway frozen): the new client's re-send is acked once, the message shows once",
  async (h, t) => {
    const gw = await h.gateway();
    const api = new Api(gw.base);
    const ann = await api.register("ann");
    const bob = await api.register("bob");
    const roomId = await api.createRoom(ann, uniq("inflight"), [bob]);
    const mem = new MemoryStore();
    const store1 = new SpyStore(mem);
    const a1 = h.client(api, ann, { url: gw.wsUrl, store: store1 });
    const b = h.client(api, bob, { url: gw.wsUrl });
    await Promise.all([a1.client.connect(), b.client.connect()]);
    const a1Room = await a1.client.join(roomId);
    const bRoom = await b.client.join(roomId);
    const bLog = new RoomLog(bRoom);
    await a1Room.send("first");
    await bLog.waitCount(1);

    // The gateway freezes; Ann's send is written to the socket but cannot be acked; her app quits.
    gw.pause();
    h.onCleanup(() => gw.resume());
    a1Room.send("in flight").catch(() => undefined);
    await eventually("the outbox is persisted", () => store1.contains("in flight"));
    const [entry] = a1.client.outbox;
    assert.equal(entry?.body, "in flight");
    a1.client.close();
    // The gateway continues: it reads the buffered send (and stores it) before the socket's end.
    gw.resume();
    await waitState(b.client, "online");
    const storedEarly = (await api.history(bob, roomId)).some((m) => m.body === "in flight");

    const a2 = h.client(api, ann, { url: gw.wsUrl, store: mem });
    await a2.client.restore();
    const a2Room = a2.client.room(roomId);
    assert.ok(a2Room);
    const a2Log = new RoomLog(a2Room);
    await a2.client.connect();
    await eventually("the re-sent entry is acked", () => a2.client.outbox.length === 0, {
      state: () => a2.client.outbox,
    });
    await bRoom.send("after");
    await a2Log.waitCount(2);
    assertExactSeqs(a2Log.seqs, 2, 3, "ann, second life");
    assert.deepEqual(a2Log.bodies, ["in flight", "after"]);
    assert.equal(a2Log.messages[0].client_msg_id, entry.clientMsgId, "the same client_msg_id");
    await bLog.waitCount(3);
    assertExactSeqs(bLog.seqs, 1, 3, "bob");
    const stored = await api.history(bob, roomId);
    assert.deepEqual(
      stored.map((m) => m.body),
      ["first", "in flight", "after"],
    );
    t.diagnostic(
      storedEarly
        ? "the frozen gateway stored the in-flight send: the new client got it by replay and its re-send was a duplicate"
        : "the in-flight send was not stored before the restart: the re-send stored it",
    );
  },
);
