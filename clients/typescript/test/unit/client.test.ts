/**
 * The ChatClient state machine against a fake socket (the test plays the
 * server). Focused on decisions that are hard to provoke on a real gateway:
 * frame contents, ordering, close-code handling, 1.0 fallback.
 */
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import {
  ChatClient,
  ChatError,
  MemoryStore,
  type ClientState,
  type ServerHello,
  type ServerMessage,
  type StateInfo,
} from "../../src/index.ts";
import { fakeServer, hello, hello10, hello11, joined, msg, sleep, waitFor, type FakeSocket } from "./fake.ts";

const clients: ChatClient[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

function make(opts: Partial<ConstructorParameters<typeof ChatClient>[0]> & { kind?: "node" | "browser" } = {}) {
  const server = fakeServer(opts.kind ?? "node");
  let tokenN = 0;
  const client = new ChatClient({
    url: "ws://gw.test/ws",
    token: () => `tok${++tokenN}`,
    WebSocket: server.WebSocket,
    backoff: { baseMs: 10, maxMs: 50 },
    ...opts,
  });
  clients.push(client);
  return { client, server, tokens: () => tokenN };
}

/** Opens socket #n and answers its hello. */
async function online(server: ReturnType<typeof fakeServer>, n: number, h = hello()): Promise<FakeSocket> {
  const s = await server.socket(n);
  s.open();
  s.push(h);
  return s;
}

test("connects with the token header and subprotocol, joins, dedupes messages", async () => {
  const { client, server } = make();
  const states: ClientState[] = [];
  client.on("state", (s) => states.push(s));
  const connected = client.connect();
  const s = await online(server, 0);
  await connected;
  assert.equal(s.options?.headers?.Authorization, "Bearer tok1");
  assert.deepEqual(s.protocols, ["chatgw.v1"]);
  assert.ok(!s.url.includes("heartbeat="), "Node ws: WebSocket pings, no heartbeat=app");
  assert.equal(client.userId, "u-me");
  assert.equal(client.serverVersion, "1.2");

  const joining = client.join("r1", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  assert.deepEqual(Object.keys(j).sort(), ["id", "room", "type"], "sinceSeq: null: no since_seq");
  s.push({ ...joined("r1", 3), id: j.id });
  const room = await joining;
  assert.equal(room.lastSeq, 3);
  assert.equal(await client.join("r1"), room, "same Room object for the same id");

  const got: number[] = [];
  room.on("message", (m) => got.push(m.seq));
  for (const seq of [4, 5, 4, 5, 6]) s.push(msg("r1", seq));
  assert.deepEqual(got, [4, 5, 6]);
  assert.equal(room.lastSeq, 6);
  assert.deepEqual(states, ["connecting", "online"]);
});

test("resumes all rooms with one sync (chunked by max_sync_rooms) after a drop, then re-sends the outbox in order", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  let s = await online(server, 0);
  for (const [i, id] of ["a", "b", "c"].entries()) {
    const p = client.join(id, { sinceSeq: null });
    const j = await s.waitSent((f) => f.type === "join" && f.room === id);
    s.push({ ...joined(id, i), id: j.id, epoch: `ep-${id}` });
    await p;
  }
  const room = client.room("a")!;
  const acks: Promise<unknown>[] = [];
  s.serverClose(1006);
  // Offline sends queue in the outbox.
  acks.push(room.send("one"), room.send("two"), room.send("three"));
  assert.equal(client.outbox.length, 3);
  const ids = client.outbox.map((e) => e.clientMsgId);

  s = await online(server, 1, hello({ limits: { ...hello().limits, max_sync_rooms: 2 } }));
  const syncs = [await s.waitSent((f) => f.type === "sync")];
  syncs.push(await s.waitSent((f) => f.type === "sync" && f.id !== syncs[0]!.id));
  assert.deepEqual(syncs[0]!.rooms, [
    { room: "a", since_seq: 0, epoch: "ep-a" },
    { room: "b", since_seq: 1, epoch: "ep-b" },
  ]);
  assert.deepEqual(syncs[1]!.rooms, [{ room: "c", since_seq: 2, epoch: "ep-c" }]);
  assert.equal(s.sentOf("send").length, 0, "outbox waits for the resume");
  s.push(joined("a", 0));
  s.push(joined("b", 1));
  s.push({ type: "synced", id: syncs[0]!.id, rooms: 2, joined: 2, failed: 0 });
  await sleep(10);
  assert.equal(s.sentOf("send").length, 0, "still waiting for the second chunk");
  s.push(joined("c", 2));
  s.push({ type: "synced", id: syncs[1]!.id, rooms: 1, joined: 1, failed: 0 });
  await waitFor(() => s.sentOf("send").length === 3, 5000, "3 sends");
  const sends = s.sentOf("send");
  assert.deepEqual(
    sends.map((f) => f.body),
    ["one", "two", "three"],
  );
  assert.deepEqual(
    sends.map((f) => f.client_msg_id),
    ids,
  );
  for (const [i, f] of sends.entries()) {
    s.push({ type: "ack", id: f.id, room: "a", client_msg_id: f.client_msg_id, seq: i + 1, sent_at: 1, duplicate: false });
  }
  await Promise.all(acks);
  assert.equal(client.outbox.length, 0);
});

test("a 1.0 server (no features) gets one join per room, without epoch", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  let s = await online(server, 0);
  for (const id of ["a", "b"]) {
    const p = client.join(id, { sinceSeq: null });
    const j = await s.waitSent((f) => f.type === "join" && f.room === id);
    s.push({ ...joined(id, 5), id: j.id });
    await p;
  }
  s.serverClose(1011);
  s = await online(server, 1, hello10());
  const ja = await s.waitSent((f) => f.type === "join" && f.room === "a");
  const jb = await s.waitSent((f) => f.type === "join" && f.room === "b");
  assert.equal(s.sentOf("sync").length, 0);
  assert.deepEqual({ room: ja.room, since_seq: ja.since_seq, epoch: ja.epoch }, { room: "a", since_seq: 5, epoch: undefined });
  assert.equal(jb.since_seq, 5);
  assert.equal(client.serverVersion, "1.0");
  // Edits are refused locally against a server without "edits".
  s.push({ type: "joined", id: ja.id, room: "a", last_seq: 5, replayed: 0, online: [] });
  s.push({ type: "joined", id: jb.id, room: "b", last_seq: 5, replayed: 0, online: [] });
  await assert.rejects(client.room("a")!.edit(5, "x"), (e: ChatError) => e.code === "bad_request");
});

test("rate_limited sends wait retry_after_ms and are re-sent with the same id; the app sees an error event", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 0), id: j.id });
  const room = await p;
  const errors: ChatError[] = [];
  client.on("error", (e) => errors.push(e));
  const ack = room.send("hi");
  const first = await s.waitSent((f) => f.type === "send");
  const t0 = Date.now();
  s.push({ type: "error", id: first.id, code: "rate_limited", message: "slow down", retry_after_ms: 120 });
  const from = s.sent.length;
  const again = await s.waitSent((f) => f.type === "send", 5000, from);
  assert.ok(Date.now() - t0 >= 110, "waited retry_after_ms");
  assert.equal(again.client_msg_id, first.client_msg_id);
  assert.notEqual(again.id, first.id);
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!.code, "rate_limited");
  assert.equal(errors[0]!.retryAfterMs, 120);
  s.push({ type: "ack", id: again.id, room: "r", client_msg_id: again.client_msg_id, seq: 1, sent_at: 1, duplicate: false });
  assert.equal((await ack).seq, 1);
});

test("a body over hello.limits.max_body_bytes is refused locally (never re-sent into a 1009 loop)", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0, hello({ limits: { ...hello().limits, max_body_bytes: 8 } }));
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 0), id: j.id });
  const room = await p;
  await assert.rejects(room.send("ééééé"), (e: ChatError) => e.code === "too_large"); // 10 bytes
  assert.equal(s.sentOf("send").length, 0);
  assert.equal(client.outbox.length, 0);
});

test("definitive refusals reject the send and leave the outbox", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 0), id: j.id });
  const room = await p;
  const sending = room.send("x".repeat(10));
  const f = await s.waitSent((x) => x.type === "send");
  s.push({ type: "error", id: f.id, code: "too_large", message: "too big", room: "r" });
  await assert.rejects(sending, (e: ChatError) => e instanceof ChatError && e.code === "too_large" && e.room === "r");
  assert.equal(client.outbox.length, 0);
});

test("drain (1001) waits reconnect_after_ms before reconnecting", async () => {
  const { client, server } = make();
  const infos: Array<{ delayMs?: number; code?: number }> = [];
  client.on("state", (st, info) => {
    if (st === "reconnecting" && info) infos.push(info);
  });
  client.connect().catch(() => {});
  const s = await online(server, 0);
  await waitFor(() => client.state === "online");
  const t0 = Date.now();
  s.serverClose(1001, "drain; reconnect_after_ms=300");
  await server.socket(1, 10_000);
  assert.ok(Date.now() - t0 >= 295, `reconnected after ${Date.now() - t0} ms`);
  assert.equal(infos[0]!.code, 1001);
  assert.ok(infos[0]!.delayMs! >= 300);
});

test("4003 (banned): state closed, error, no reconnect", async () => {
  const { client, server } = make();
  const errors: ChatError[] = [];
  client.on("error", (e) => errors.push(e));
  client.connect().catch(() => {});
  const s = await online(server, 0);
  await waitFor(() => client.state === "online");
  s.serverClose(4003, "banned");
  await waitFor(() => client.state === "closed");
  assert.equal(errors[0]!.code, "forbidden");
  assert.equal(errors[0]!.closeCode, 4003);
  await sleep(100);
  assert.equal(server.sockets.length, 1);
});

test("a 403 handshake rejects connect()", async () => {
  const { client, server } = make();
  const connecting = client.connect();
  (await server.socket(0)).refuse(403);
  await assert.rejects(connecting, (e: ChatError) => e.code === "forbidden");
  assert.equal(client.state, "closed");
});

test("4001 gets a fresh token and reconnects; a 401 handshake too; repeated refusals give up", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  await waitFor(() => client.state === "online");
  s.push({ type: "error", code: "token_expired", message: "expired" });
  s.serverClose(4001);
  const s1 = await server.socket(1);
  assert.equal(s1.options?.headers?.Authorization, "Bearer tok2");
  s1.refuse(401);
  const s2 = await server.socket(2);
  assert.equal(s2.options?.headers?.Authorization, "Bearer tok3");
  s2.refuse(401);
  await waitFor(() => client.state === "closed", 5000, "gives up after 3 refusals in a row");
});

test("renews the token with `auth` before it expires", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0, hello({ token_expires_in_ms: 400 }));
  const auth = await s.waitSent((f) => f.type === "auth");
  assert.equal(auth.token, "tok2");
  s.push({ type: "auth_ok", id: auth.id, expires_at: Date.now() + 400, expires_in_ms: 400 });
  const auth2 = await s.waitSent((f) => f.type === "auth" && f.id !== auth.id);
  assert.equal(auth2.token, "tok3");
  // A refused renewal is retried on the same connection.
  s.push({ type: "error", id: auth2.id, code: "unauthorized", message: "bad token" });
  const auth3 = await s.waitSent((f) => f.type === "auth" && f.id !== auth.id && f.id !== auth2.id);
  assert.equal(auth3.token, "tok4");
  assert.equal(server.sockets.length, 1);
});

test("browser: ticket + app heartbeat: answers ping with pong and detects a silent server", async () => {
  let n = 0;
  const { client, server } = make({ kind: "browser", token: undefined, ticket: async () => `wst_${++n}` });
  assert.equal(client.heartbeatMode, "app");
  client.connect().catch(() => {});
  const s = await server.socket(0);
  const url = new URL(s.url);
  assert.equal(url.searchParams.get("ticket"), "wst_1");
  assert.equal(url.searchParams.get("heartbeat"), "app");
  assert.equal(s.options, undefined, "no headers in browsers");
  s.open();
  s.push(hello({ heartbeat: "app", heartbeat_ms: 100 }));
  s.push({ type: "ping" });
  const pong = await s.waitSent((f) => f.type === "pong");
  assert.deepEqual(pong, { type: "pong" }, "a pong carries nothing else");
  // Silence for 2 x heartbeat_ms (+ margin): dead; a new socket with a new ticket.
  const s1 = await server.socket(1, 10_000);
  assert.equal(new URL(s1.url).searchParams.get("ticket"), "wst_2");
  assert.ok(s.closedByClient, "the dead socket was closed");
});

test("Node ws: WebSocket pings keep the connection alive; their absence kills it", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0, hello({ heartbeat_ms: 100 }));
  const keepAlive = setInterval(() => {
    for (const l of s.pingListeners) l();
  }, 50);
  await sleep(600);
  assert.equal(server.sockets.length, 1, "pings kept it alive");
  clearInterval(keepAlive);
  await server.socket(1, 10_000);
  assert.ok((s as unknown as { terminated: boolean }).terminated, "terminated, not a 30 s close handshake");
  void client;
});

test("room removal (left + room_removed) forgets the room; it is not resumed", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  let s = await online(server, 0);
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 2), id: j.id });
  const room = await p;
  const removed: string[] = [];
  const userEvents: string[] = [];
  room.on("removed", (i) => removed.push(i.reason));
  client.on("room_removed", (f) => userEvents.push(f.reason));
  s.push({ type: "left", room: "r", reason: "removed" });
  s.push({ type: "room_removed", room: "r", reason: "removed" });
  assert.deepEqual(removed, ["removed"]);
  assert.deepEqual(userEvents, ["removed"]);
  assert.equal(client.room("r"), undefined);
  assert.equal(client.rooms.length, 0);
  s.serverClose(1006);
  s = await online(server, 1);
  await sleep(50);
  assert.equal(s.sentOf("sync").length, 0, "nothing to resume");
});

test("a gap re-joins from lastSeq; reset and history_gone move lastSeq/epoch", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const gaps: unknown[] = [];
  client.on("gap", (g) => gaps.push(g));
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 5), id: j.id });
  const room = await p;
  assert.equal(client.gapRecoveries, 0);
  const got: number[] = [];
  const resets: string[] = [];
  room.on("message", (m) => got.push(m.seq));
  room.on("reset", (r) => resets.push(r.type));
  s.push(msg("r", 6));
  s.push(msg("r", 9)); // gap: 7, 8 missing
  const rejoin = await s.waitSent((f) => f.type === "join" && f.id !== j.id);
  assert.equal(rejoin.since_seq, 6);
  assert.equal(rejoin.epoch, "ep1");
  for (const seq of [7, 8, 9]) s.push(msg("r", seq));
  s.push({ ...joined("r", 9), id: rejoin.id });
  assert.deepEqual(got, [6, 7, 8, 9]);
  assert.equal(client.gapRecoveries, 1, "one gap recovery, counted");
  assert.deepEqual(gaps, [{ room: "r", lastSeq: 6, seq: 9 }], "and announced");

  s.push({ type: "reset", room: "r", reason: "epoch", epoch: "ep2", last_seq: 20 });
  assert.equal(room.lastSeq, 20);
  assert.equal(room.epoch, "ep2");
  s.push({ type: "history_gone", room: "r", since_seq: 20, oldest_seq: 31 });
  assert.equal(room.lastSeq, 30);
  s.push(msg("r", 31));
  assert.deepEqual(got, [6, 7, 8, 9, 31]);
  assert.deepEqual(resets, ["reset", "history_gone"]);
});

test("edits, deletes, typing, read and presence reach the room", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 1), id: j.id, online: ["u-me"], read_seq: 1 });
  const room = await p;
  const events: string[] = [];
  room.on("edit", (e) => events.push(`edit ${e.seq}->${e.target_seq}`));
  room.on("delete", (d) => events.push(`delete ${d.seq}->${d.target_seq}`));
  room.on("typing", (t) => events.push(`typing ${t.user}`));
  room.on("presence", (pr) => events.push(`presence ${pr.user} ${pr.status} ${room.online.has(pr.user)}`));
  room.on("read", (r) => events.push(`read ${r.user} ${r.seq}`));
  s.push({ type: "edit", room: "r", seq: 2, target_seq: 1, sender: "u-me", body: "new", client_msg_id: "e1", sent_at: 1 });
  s.push({ type: "delete", room: "r", seq: 3, target_seq: 1, sender: "u-me", reason: "author", client_msg_id: "d1", sent_at: 2 });
  s.push({ type: "edit", room: "r", seq: 2, target_seq: 1, sender: "u-me", body: "new", client_msg_id: "e1", sent_at: 1 });
  s.push({ type: "typing", room: "r", user: "u-bob" });
  s.push({ type: "typing", room: "r", user: "u-me" }); // own other device: ignored
  s.push({ type: "presence", room: "r", user: "u-bob", status: "online" });
  s.push({ type: "presence", room: "r", user: "u-bob", status: "offline" });
  s.push({ type: "read", room: "r", user: "u-bob", seq: 3 });
  assert.deepEqual(events, [
    "edit 2->1",
    "delete 3->1",
    "typing u-bob",
    "presence u-bob online true",
    "presence u-bob offline false",
    "read u-bob 3",
  ]);
  assert.equal(room.unread, 2);
  const reading = room.markRead(3);
  const rf = await s.waitSent((f) => f.type === "read");
  assert.deepEqual({ room: rf.room, seq: rf.seq }, { room: "r", seq: 3 });
  assert.equal(room.unread, 0);
  s.push({ type: "read", room: "r", user: "u-me", seq: 3 });
  await reading;
  // typing is throttled.
  room.typing();
  room.typing();
  await sleep(10);
  assert.equal(s.sentOf("typing").length, 1);
});

test("messages() iterates the same stream, buffered", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 0), id: j.id });
  const room = await p;
  const it = room.messages();
  s.push(msg("r", 1));
  s.push(msg("r", 2));
  s.push(msg("r", 2));
  const seen: ServerMessage[] = [];
  for await (const m of it) {
    seen.push(m);
    if (seen.length === 2) break;
  }
  assert.deepEqual(
    seen.map((m) => m.seq),
    [1, 2],
  );
});

test("a new client with the same store restores rooms and the outbox and resumes", async () => {
  const store = new MemoryStore();
  const first = make({ store });
  first.client.connect().catch(() => {});
  const s = await online(first.server, 0);
  const p = first.client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 4), id: j.id, read_seq: 2 });
  const room = await p;
  s.push(msg("r", 5));
  const pending = room.send("unacked", { clientMsgId: "my-id-1" });
  pending.catch(() => {});
  await s.waitSent((f) => f.type === "send");
  await first.client.flush();
  first.client.close(); // the app dies: no ack came

  const second = make({ store });
  await second.client.restore();
  const restored = second.client.room("r")!;
  assert.equal(restored.lastSeq, 5);
  assert.equal(restored.epoch, "ep1");
  assert.equal(restored.readSeq, 2);
  assert.deepEqual(
    second.client.outbox.map((e) => e.clientMsgId),
    ["my-id-1"],
  );
  const got: number[] = [];
  restored.on("message", (m) => got.push(m.seq));
  second.client.connect().catch(() => {});
  const s2 = await online(second.server, 0);
  const sync = await s2.waitSent((f) => f.type === "sync");
  assert.deepEqual(sync.rooms, [{ room: "r", since_seq: 5, epoch: "ep1" }]);
  s2.push(msg("r", 5)); // duplicate: skipped
  s2.push(msg("r", 6, "unacked", "u-me", "my-id-1"));
  s2.push(joined("r", 6));
  s2.push({ type: "synced", id: sync.id, rooms: 1, joined: 1, failed: 0 });
  const resend = await s2.waitSent((f) => f.type === "send");
  assert.equal(resend.client_msg_id, "my-id-1");
  assert.equal(resend.body, "unacked");
  s2.push({ type: "ack", id: resend.id, room: "r", client_msg_id: "my-id-1", seq: 6, sent_at: 1, duplicate: true });
  await waitFor(() => second.client.outbox.length === 0);
  assert.deepEqual(got, [6]);
});

test("a room refused in the sync (forbidden) is forgotten; others go live", async () => {
  const store = new MemoryStore();
  const { client, server } = make({ store });
  client.connect().catch(() => {});
  let s = await online(server, 0);
  for (const id of ["ok", "gone"]) {
    const p = client.join(id, { sinceSeq: null });
    const j = await s.waitSent((f) => f.type === "join" && f.room === id);
    s.push({ ...joined(id, 1), id: j.id });
    await p;
  }
  const removed: string[] = [];
  client.room("gone")!.on("removed", (r) => removed.push(r.reason));
  s.serverClose(4009);
  const sending = client.room("ok")!.send("queued");
  s = await online(server, 1);
  const sync = await s.waitSent((f) => f.type === "sync");
  s.push(joined("ok", 1));
  s.push({ type: "error", code: "forbidden", message: "not a member", room: "gone" });
  await sleep(20);
  assert.equal(s.sentOf("send").length, 0, "the resume ends with synced, not with a room's error");
  s.push({ type: "synced", id: sync.id, rooms: 2, joined: 1, failed: 1 });
  const sf = await s.waitSent((f) => f.type === "send");
  s.push({ type: "ack", id: sf.id, room: "ok", client_msg_id: sf.client_msg_id, seq: 2, sent_at: 1, duplicate: false });
  await sending;
  await waitFor(() => client.room("gone") === undefined);
  assert.deepEqual(removed, ["removed"]);
  assert.ok(client.room("ok")!.joinedOnSocket);
});

test("close() stops everything: pending sends reject with closed, no reconnect", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 0), id: j.id });
  const room = await p;
  const sending = room.send("x");
  const states: ClientState[] = [];
  client.on("state", (st) => states.push(st));
  client.close();
  assert.deepEqual(states, ["closed"]);
  await assert.rejects(sending, (e: ChatError) => e.code === "closed");
  assert.equal(s.closedByClient?.code, 1000);
  await sleep(50);
  assert.equal(server.sockets.length, 1);
  assert.equal(client.state, "closed");
  await assert.rejects(client.connect(), (e: ChatError) => e.code === "closed");
});

test("the replay of `await join()` is held until the app's first stream listener, in seq order", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const p = client.join("r", { sinceSeq: 0 });
  const j = await s.waitSent((f) => f.type === "join");
  assert.equal(j.since_seq, 0);
  s.push(msg("r", 1));
  s.push({ type: "edit", room: "r", seq: 2, target_seq: 1, sender: "u-other", body: "m1!", client_msg_id: "e", sent_at: 1 });
  s.push(msg("r", 3));
  s.push({ ...joined("r", 3), id: j.id });
  const room = await p;
  const seen: string[] = [];
  room.on("message", (m) => seen.push(`message ${m.seq}`));
  room.on("edit", (e) => seen.push(`edit ${e.seq}`));
  s.push(msg("r", 4)); // live, after the listener: must come after the held ones
  await sleep(0);
  assert.deepEqual(seen, ["message 1", "edit 2", "message 3", "message 4"]);
  s.push(msg("r", 5));
  assert.deepEqual(seen.at(-1), "message 5", "then delivered synchronously");
});

test("heartbeat 'ws' where pings are invisible: the client sends `ping` frames to keep traffic flowing", async () => {
  const { client, server } = make({ kind: "browser", token: undefined, ticket: () => "wst", heartbeat: "ws" });
  client.connect().catch(() => {});
  const s = await server.socket(0);
  assert.equal(new URL(s.url).searchParams.get("heartbeat"), null);
  s.open();
  s.push(hello({ heartbeat: "ws", heartbeat_ms: 50 }));
  const ping = await s.waitSent((f) => f.type === "ping");
  s.push({ type: "pong", id: ping.id });
  assert.equal(typeof ping.id, "string");
});

test("a sync refused as a whole falls back to one join per room", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  let s = await online(server, 0);
  for (const id of ["a", "b"]) {
    const p = client.join(id, { sinceSeq: null });
    const j = await s.waitSent((f) => f.type === "join" && f.room === id);
    s.push({ ...joined(id, 1), id: j.id });
    await p;
  }
  s.serverClose(4000, "operator");
  s = await online(server, 1);
  const sync = await s.waitSent((f) => f.type === "sync");
  s.push({ type: "error", id: sync.id, code: "bad_request", message: "nope" });
  const ja = await s.waitSent((f) => f.type === "join" && f.room === "a");
  const jb = await s.waitSent((f) => f.type === "join" && f.room === "b");
  assert.equal(ja.since_seq, 1);
  s.push({ ...joined("a", 1), id: ja.id });
  s.push({ ...joined("b", 1), id: jb.id });
  await waitFor(() => client.rooms.every((r) => r.joinedOnSocket));
});

test("credential providers: a ChatError('unauthorized') ends the client; other failures are retried", async () => {
  let calls = 0;
  const a = make({
    token: () => {
      calls++;
      if (calls === 1) throw new Error("REST unreachable");
      return "tok";
    },
  });
  const states: Array<[ClientState, StateInfo | undefined]> = [];
  a.client.on("state", (st, info) => states.push([st, info]));
  a.client.connect().catch(() => {});
  const s = await a.server.socket(0);
  assert.equal(s.options?.headers?.Authorization, "Bearer tok");
  assert.equal(calls, 2);
  // The app is told why it is reconnecting although no socket ended.
  const rec = states.find(([st]) => st === "reconnecting");
  assert.equal(rec?.[1]?.error?.code, "provider_failed", JSON.stringify(states));
  assert.match(rec?.[1]?.error?.message ?? "", /REST unreachable/);

  const b = make({
    token: () => {
      throw new ChatError("unauthorized", "refresh token revoked: log in again");
    },
  });
  await assert.rejects(b.client.connect(), (e: ChatError) => e.code === "unauthorized");
  assert.equal(b.client.state, "closed");
  assert.equal(b.server.sockets.length, 0);
});

test("4009 reconnects promptly and resumes from lastSeq; nothing is delivered twice", async () => {
  const { client, server } = make({ backoff: { baseMs: 60_000, maxMs: 60_000 } });
  client.connect().catch(() => {});
  let s = await online(server, 0);
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 0), id: j.id });
  const room = await p;
  const got: number[] = [];
  room.on("message", (m) => got.push(m.seq));
  s.push(msg("r", 1));
  s.push(msg("r", 2));
  s.serverClose(4009);
  s = await online(server, 1); // with a 60 s backoff, only the prompt 4009 rule gets here in time
  const sync = await s.waitSent((f) => f.type === "sync");
  assert.deepEqual(sync.rooms, [{ room: "r", since_seq: 2, epoch: "ep1" }]);
  for (const seq of [2, 3]) s.push(msg("r", seq));
  s.push(joined("r", 3));
  s.push({ type: "synced", id: sync.id, rooms: 1, joined: 1, failed: 0 });
  assert.deepEqual(got, [1, 2, 3]);
});

test("a hello for another user loads that user's stored state instead", async () => {
  const store = new MemoryStore();
  await store.set("user", "u-old");
  await store.set(
    "state:u-old",
    JSON.stringify({ v: 1, rooms: { old: { lastSeq: 9 } }, outbox: [{ room: "old", clientMsgId: "x", kind: "send", body: "b" }] }),
  );
  await store.set("state:u-me", JSON.stringify({ v: 1, rooms: { mine: { lastSeq: 4, epoch: "e" } }, outbox: [] }));
  const { client, server } = make({ store });
  await client.restore();
  assert.deepEqual(
    client.rooms.map((r) => r.id),
    ["old"],
  );
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const sync = await s.waitSent((f) => f.type === "sync");
  assert.deepEqual(sync.rooms, [{ room: "mine", since_seq: 4, epoch: "e" }]);
  assert.equal(client.outbox.length, 0);
  await client.flush();
  assert.equal(await store.get("user"), "u-me");
  assert.ok((await store.get("state:u-old"))!.includes('"clientMsgId":"x"'), "the other user's outbox is kept for them");
});

test("1.0 resume of many rooms paces its joins under the events bucket", async () => {
  const store = new MemoryStore();
  const rooms: Record<string, { lastSeq: number }> = {};
  for (let i = 0; i < 12; i++) rooms[`r${i}`] = { lastSeq: i };
  await store.set("user", "u-me");
  await store.set("state:u-me", JSON.stringify({ v: 1, rooms, outbox: [] }));
  const { client, server } = make({ store });
  client.connect().catch(() => {});
  const s = await online(server, 0, hello10({ limits: { ...hello().limits, events_burst: 8, events_per_sec: 4 } }));
  await sleep(50);
  assert.equal(s.sentOf("join").length, 4, "half the burst at once");
  await waitFor(() => s.sentOf("join").length === 6, 5000, "2 more a second later");
  for (const j of s.sentOf("join")) s.push({ type: "joined", id: j.id, room: j.room, last_seq: j.since_seq, replayed: 0, online: [] });
  await waitFor(() => s.sentOf("join").length === 12, 10_000, "all joins");
  for (const j of s.sentOf("join").slice(6)) s.push({ type: "joined", id: j.id, room: j.room, last_seq: j.since_seq, replayed: 0, online: [] });
  await waitFor(() => client.rooms.every((r) => r.joinedOnSocket));
});

test("joins beyond the events bucket are queued and paced, never refused into a 4008", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0, hello({ limits: { ...hello().limits, events_burst: 6, events_per_sec: 10 } }));
  await waitFor(() => client.state === "online");
  const joins = Array.from({ length: 10 }, (_, i) => client.join(`r${i}`, { sinceSeq: null }));
  await sleep(20);
  assert.equal(s.sentOf("join").length, 4, "burst - 2 at once");
  await waitFor(() => s.sentOf("join").length === 10, 10_000, "the rest, paced");
  for (const j of s.sentOf("join")) s.push({ ...joined(j.room as string, 0), id: j.id });
  await Promise.all(joins);
});

test("a first join without a stored position replays the room from 0 (nothing sent before it is missed)", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const p = client.join("r");
  const j = await s.waitSent((f) => f.type === "join");
  assert.equal(j.since_seq, 0, "default: replay from 0");
  for (const seq of [1, 2, 3]) s.push(msg("r", seq));
  s.push({ ...joined("r", 3, { replayed: 3 }), id: j.id });
  const room = await p;
  const got: number[] = [];
  room.on("message", (m) => got.push(m.seq));
  await waitFor(() => got.length === 3);
  assert.deepEqual(got, [1, 2, 3]);
  assert.equal(client.gapRecoveries, 0);

  // sinceSeq: null starts at the live edge.
  const q = client.join("live", { sinceSeq: null });
  const j2 = await s.waitSent((f) => f.type === "join" && f.room === "live");
  assert.equal(j2.since_seq, undefined);
  s.push({ ...joined("live", 7), id: j2.id });
  assert.equal((await q).lastSeq, 7);
});

test("one token refresh at a time: a renewal and a reconnect that overlap share one provider call", async () => {
  let calls = 0;
  let release: (() => void) | undefined;
  const { client, server } = make({
    token: () => {
      calls++;
      if (calls === 1) return "tok1";
      // The second call hangs until released: a slow refresh over REST.
      return new Promise<string>((resolve) => {
        release = () => resolve(`tok${calls}`);
      });
    },
  });
  client.connect().catch(() => {});
  const s = await online(server, 0, hello({ token_expires_in_ms: 200 }));
  await waitFor(() => calls === 2, 5000, "the renewal asks the provider");
  // While the renewal's refresh is pending the socket drops: the reconnect needs a token too.
  s.serverClose(1011);
  await sleep(100);
  assert.equal(calls, 2, "the reconnect waits for the refresh in flight instead of starting another");
  release!();
  const s1 = await server.socket(1);
  assert.equal(s1.options?.headers?.Authorization, "Bearer tok2", "the shared result is used");
  assert.equal(calls, 2);
});

test("protocol 1.2: accepted; not_author rejects that edit only, forbidden on a send drops the room", { timeout: 10_000 }, async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0, hello({ protocol_version: "1.2" } as unknown as Partial<ServerHello>));
  await waitFor(() => client.state === "online");
  assert.equal(client.serverVersion, "1.2");
  const p = client.join("r");
  const j = await s.waitSent((f) => f.type === "sync" || f.type === "join");
  s.push({ ...joined("r", 0), id: j.id });
  const room = await p;
  const removed: string[] = [];
  room.on("removed", (r) => removed.push(r.reason));

  const edit = room.edit(1, "not mine");
  const e = await s.waitSent((f) => f.type === "edit");
  s.push({ type: "error", id: e.id, code: "not_author", message: "not your message", room: "r" });
  await assert.rejects(edit, (err: ChatError) => err.code === "not_author" && err.room === "r");
  assert.equal(client.outbox.length, 0, "the refused edit leaves the outbox");
  assert.equal(client.room("r"), room, "not_author does not drop the room");
  assert.deepEqual(removed, []);
  const send = room.send("still here");
  const f = await s.waitSent((x) => x.type === "send");
  s.push({ type: "ack", id: f.id, room: "r", client_msg_id: f.client_msg_id, seq: 1, duplicate: false });
  assert.equal((await send).seq, 1);

  const refused = room.send("after removal");
  const g = await s.waitSent((x) => x.type === "send" && x.id !== f.id);
  s.push({ type: "error", id: g.id, code: "forbidden", message: "not a member", room: "r" });
  await assert.rejects(refused, (err: ChatError) => err.code === "forbidden");
  assert.equal(client.room("r"), undefined, "forbidden drops the room");
  assert.deepEqual(removed, ["removed"]);
});

test("protocol 1.2: edit is gated on \"edits\", delete on \"deletes\" (or \"edits\" from 1.1); the edit window is exposed", async () => {
  /** Connects to a server with hello `h`, joins room r (last_seq 1) and returns the pieces. */
  async function against(h: ServerHello) {
    const { client, server } = make();
    client.connect().catch(() => {});
    const s = await online(server, 0, h);
    await waitFor(() => client.state === "online");
    const p = client.join("r", { sinceSeq: null });
    const j = await s.waitSent((f) => f.type === "join");
    s.push({ ...joined("r", 1), id: j.id });
    return { client, s, room: await p };
  }
  const limits = hello().limits;

  // 1.2 with edits off (EDIT_WINDOW_SECS=0): "deletes" without "edits".
  const off = await against(
    hello({ features: ["sync", "user_stream", "deletes", "retention", "app_heartbeat"], limits: { ...limits, edit_window_ms: 0 } }),
  );
  assert.equal(off.client.editWindowMs, 0);
  assert.deepEqual([off.client.canEdit, off.client.canDelete], [false, true]);
  await assert.rejects(off.room.edit(1, "x"), (e: ChatError) => e.code === "bad_request" && e.room === "r");
  const del = off.room.delete(1);
  const d = await off.s.waitSent((f) => f.type === "delete");
  off.s.push({ type: "ack", id: d.id, room: "r", client_msg_id: d.client_msg_id, seq: 2, duplicate: false });
  assert.equal((await del).seq, 2, "a delete is served with edits off");
  assert.equal(off.s.sentOf("edit").length, 0, "no edit frame reached a server without edits");

  // 1.2 with edits on: both, and the window in the typed API.
  const on = await against(hello());
  assert.equal(on.client.editWindowMs, 900_000);
  assert.deepEqual([on.client.canEdit, on.client.canDelete], [true, true]);
  const ed = on.room.edit(1, "y");
  const e = await on.s.waitSent((f) => f.type === "edit");
  on.s.push({ type: "ack", id: e.id, room: "r", client_msg_id: e.client_msg_id, seq: 2, duplicate: false });
  assert.equal((await ed).seq, 2);

  // 1.1: "edits" covers delete (no "deletes" then); no window announced.
  const v11 = await against(hello11());
  assert.equal(v11.client.serverVersion, "1.1");
  assert.equal(v11.client.editWindowMs, undefined);
  assert.deepEqual([v11.client.canEdit, v11.client.canDelete], [true, true]);
  const del11 = v11.room.delete(1);
  const d11 = await v11.s.waitSent((f) => f.type === "delete");
  v11.s.push({ type: "ack", id: d11.id, room: "r", client_msg_id: d11.client_msg_id, seq: 2, duplicate: false });
  assert.equal((await del11).seq, 2);

  // 1.2 listing "edits" but not "deletes": delete not served (only a 1.1 server's "edits" covers it).
  const noDel = await against(hello({ features: ["sync", "edits"] }));
  assert.deepEqual([noDel.client.canEdit, noDel.client.canDelete], [true, false]);
  await assert.rejects(noDel.room.delete(1), (err: ChatError) => err.code === "bad_request");
  assert.equal(noDel.s.sentOf("delete").length, 0);
});

test("every edit and delete gets a fresh client_msg_id (one namespace with sends, §13.3)", async () => {
  const { client, server } = make();
  client.connect().catch(() => {});
  const s = await online(server, 0);
  const p = client.join("r", { sinceSeq: null });
  const j = await s.waitSent((f) => f.type === "join");
  s.push({ ...joined("r", 0), id: j.id });
  const room = await p;
  const sent = room.send("hello");
  const f = await s.waitSent((x) => x.type === "send");
  s.push({ type: "ack", id: f.id, room: "r", client_msg_id: f.client_msg_id, seq: 1, duplicate: false });
  await sent;
  // Two edits of the same message (the second with the first's body too) and a delete.
  const changes = [room.edit(1, "v2"), room.edit(1, "v2"), room.delete(1)];
  await waitFor(() => s.sentOf("edit").length === 2 && s.sentOf("delete").length === 1, 5000, "two edits and a delete sent");
  const frames = [...s.sentOf("edit"), ...s.sentOf("delete")];
  const ids = [f.client_msg_id, ...frames.map((x) => x.client_msg_id)];
  assert.equal(new Set(ids).size, 4, `one id per request, none reused: ${JSON.stringify(ids)}`);
  frames.forEach((x, k) =>
    s.push({ type: "ack", id: x.id, room: "r", client_msg_id: x.client_msg_id, seq: 2 + k, duplicate: false }),
  );
  assert.deepEqual((await Promise.all(changes)).map((a) => a.seq), [2, 3, 4]);
});

test("change events advance lastSeq like messages; a room joined at 0 resumes with since_seq 0, after a drop and a restart", async () => {
  const store = new MemoryStore();
  const { client, server } = make({ store });
  client.connect().catch(() => {});
  let s = await online(server, 0);
  // "empty": joined at the live edge of a room without messages (last_seq 0).
  const pe = client.join("empty", { sinceSeq: null });
  const je = await s.waitSent((f) => f.type === "join" && f.room === "empty");
  s.push({ ...joined("empty", 0), id: je.id });
  assert.equal((await pe).lastSeq, 0);
  const pq = client.join("q", { sinceSeq: null });
  const jq = await s.waitSent((f) => f.type === "join" && f.room === "q");
  s.push({ ...joined("q", 3), id: jq.id });
  const q = await pq;
  const seen: string[] = [];
  q.on("message", (m) => seen.push(`message ${m.seq}`));
  q.on("edit", (e) => seen.push(`edit ${e.seq}`));
  q.on("delete", (d) => seen.push(`delete ${d.seq}`));
  s.push(msg("q", 4));
  s.push({ type: "edit", room: "q", seq: 5, target_seq: 4, sender: "u-other", body: "m4'", client_msg_id: "e5", sent_at: 5 });
  s.push({ type: "delete", room: "q", seq: 6, target_seq: 4, sender: "u-other", reason: "author", client_msg_id: "d6", sent_at: 6 });
  s.push(msg("q", 7));
  assert.deepEqual(seen, ["message 4", "edit 5", "delete 6", "message 7"]);
  assert.equal(q.lastSeq, 7);
  assert.equal(client.gapRecoveries, 0, "no change event was taken for a gap");
  assert.equal(s.sentOf("join").length, 2, "no re-join");

  const resumeOf = async (sock: FakeSocket) => {
    const sync = await sock.waitSent((f) => f.type === "sync");
    return Object.fromEntries((sync.rooms as Array<{ room: string; since_seq?: number }>).map((e) => [e.room, e.since_seq]));
  };
  s.serverClose(1006);
  s = await online(server, 1);
  assert.deepEqual(await resumeOf(s), { empty: 0, q: 7 }, "resume after a drop: since_seq 0 for the empty room");

  await client.flush();
  client.close();
  const again = make({ store });
  again.client.connect().catch(() => {});
  const s2 = await online(again.server, 0);
  assert.deepEqual(await resumeOf(s2), { empty: 0, q: 7 }, "resume after an app restart: the same");
});
