import assert from "node:assert/strict";
import { test } from "node:test";
import { Outbox } from "../../src/outbox.ts";

test("keeps order, dedupes by clientMsgId, removes on ack", () => {
  const o = new Outbox();
  assert.ok(o.add({ room: "r", clientMsgId: "a", kind: "send", body: "1" }));
  assert.ok(o.add({ room: "r", clientMsgId: "b", kind: "send", body: "2" }));
  assert.ok(!o.add({ room: "r", clientMsgId: "a", kind: "send", body: "1" }), "same id twice");
  assert.ok(o.add({ room: "r", clientMsgId: "c", kind: "edit", body: "x", seq: 1 }));
  assert.deepEqual(
    o.list().map((e) => e.clientMsgId),
    ["a", "b", "c"],
  );
  assert.equal(o.remove("b")?.body, "2");
  assert.equal(o.remove("b"), undefined);
  assert.deepEqual(
    o.list().map((e) => e.clientMsgId),
    ["a", "c"],
  );
});

test("in-flight tracking: unsent() skips in-flight entries; a reconnect resets", () => {
  const o = new Outbox();
  for (const id of ["a", "b", "c"]) o.add({ room: "r", clientMsgId: id, kind: "send", body: id });
  o.markInflight("a", "o1");
  o.markInflight("b", "o2");
  assert.equal(o.inflightCount, 2);
  assert.deepEqual(
    o.unsent().map((e) => e.clientMsgId),
    ["c"],
  );
  o.clearInflight("a"); // e.g. rate limited: a goes back in front
  assert.deepEqual(
    o.unsent().map((e) => e.clientMsgId),
    ["a", "c"],
  );
  o.resetInflight();
  assert.deepEqual(
    o.unsent().map((e) => e.clientMsgId),
    ["a", "b", "c"],
  );
  o.remove("a");
  assert.equal(o.isInflight("a"), false);
});

test("load() restores in order and drops duplicate ids", () => {
  const o = new Outbox();
  o.load([
    { room: "r", clientMsgId: "x", kind: "send", body: "1" },
    { room: "r", clientMsgId: "y", kind: "delete", seq: 4 },
    { room: "r", clientMsgId: "x", kind: "send", body: "1" },
  ]);
  assert.deepEqual(
    o.list().map((e) => e.clientMsgId),
    ["x", "y"],
  );
  const snapshot = o.list();
  snapshot[0]!.body = "mutated";
  assert.equal(o.get("x")?.body, "1", "list() is a copy");
  assert.deepEqual(
    o.removeWhere((e) => e.kind === "delete").map((e) => e.clientMsgId),
    ["y"],
  );
  assert.equal(o.size, 1);
});

test("utf8Length counts UTF-8 bytes like the server", async () => {
  const { utf8Length } = await import("../../src/client.ts");
  for (const s of ["", "abc", "é", "ééééé", "€", "🚲", "a🚲b", "\ud800", "x\udc00y"]) {
    assert.equal(utf8Length(s), Buffer.byteLength(s, "utf8"), JSON.stringify(s));
  }
});

test("buildUrl adds ticket and heartbeat parameters", async () => {
  const { buildUrl } = await import("../../src/transport.ts");
  assert.equal(buildUrl("ws://h:1/ws", undefined, false), "ws://h:1/ws");
  assert.equal(buildUrl("ws://h:1/ws", "wst_a/b+c", true), "ws://h:1/ws?ticket=wst_a%2Fb%2Bc&heartbeat=app");
  assert.equal(buildUrl("wss://h/ws?x=1#frag", undefined, true), "wss://h/ws?x=1&heartbeat=app");
  // The server answers a repeated ticket or heartbeat with 400: the SDK's own replace the base URL's.
  assert.equal(buildUrl("wss://h/ws?heartbeat=ws&x=1&ticket=old", "new", true), "wss://h/ws?x=1&ticket=new&heartbeat=app");
  assert.equal(buildUrl("wss://h/ws?heartbeat=ws", undefined, false), "wss://h/ws?heartbeat=ws");
});

test("chunkSync keeps sync frames under max_sync_rooms and max_frame_bytes, in order", async () => {
  const { chunkSync } = await import("../../src/client.ts");
  const entries = Array.from({ length: 1000 }, (_, i) => ({
    room: `room-${String(i).padStart(59, "0")}`, // 64 chars
    since_seq: 1_000_000_000 + i,
    epoch: "e".repeat(64),
  }));
  const chunks = chunkSync(entries, 1000, 65536);
  assert.ok(chunks.length > 1, "1000 long entries do not fit one 64 KiB frame");
  for (const c of chunks) {
    const frame = JSON.stringify({ type: "sync", id: "r4294967295", rooms: c });
    assert.ok(Buffer.byteLength(frame) <= 65536, `frame of ${Buffer.byteLength(frame)} bytes`);
  }
  assert.deepEqual(chunks.flat(), entries);
  assert.deepEqual(
    chunkSync(entries.slice(0, 5), 2, 65536).map((c) => c.length),
    [2, 2, 1],
  );
  assert.deepEqual(chunkSync([], 10, 65536), []);
});

test("TokenBucket mirrors the server's bucket with headroom", async () => {
  const { TokenBucket } = await import("../../src/client.ts");
  const b = new TokenBucket(100, 50);
  b.configure(10, 5);
  let taken = 0;
  while (b.take()) taken++;
  assert.equal(taken, 8, "burst - 2");
  assert.ok(b.waitMs() > 0 && b.waitMs() <= Math.ceil(1000 / 4.5));
});
