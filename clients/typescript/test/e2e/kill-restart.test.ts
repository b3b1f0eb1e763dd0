/**
 * The gateway is SIGKILLed mid-traffic and restarted on the same port and
 * data. Sends in flight at the kill and sends made while it is down (held
 * in the outbox) are all acked afterwards, and both users see every message
 * exactly once, in order, with each sender's messages in the order sent.
 */
import assert from "node:assert/strict";

import type { ServerAck } from "../../src/index.ts";
import { Api, RoomLog, assertCleanWire, assertExactSeqs, e2e, eventually, uniq, waitState } from "../harness.ts";

e2e(
  "SIGKILL and restart mid-traffic: offline and in-flight sends acked, every message exactly once in order",
  async (h) => {
    const gw = await h.gateway();
    const api = new Api(gw.base);
    const ann = await api.register("ann");
    const bob = await api.register("bob");
    const roomId = await api.createRoom(ann, uniq("outage"), [bob]);
    // A second room: the resume after the restart covers several rooms at once (bulk sync).
    const sideId = await api.createRoom(bob, uniq("side"), [ann]);

    const a = h.client(api, ann, { url: gw.wsUrl });
    const b = h.client(api, bob, { url: gw.wsUrl });
    await Promise.all([a.client.connect(), b.client.connect()]);
    const aRoom = await a.client.join(roomId);
    const bRoom = await b.client.join(roomId);
    const aLog = new RoomLog(aRoom);
    const bLog = new RoomLog(bRoom);
    const aSide = new RoomLog(await a.client.join(sideId));
    const bSideRoom = await b.client.join(sideId);
    await bSideRoom.send("s1");
    const outboxSizes: number[] = [];
    a.client.on("outbox", (n: number) => {
      outboxSizes.push(n);
    });

    // Phase 1: normal traffic.
    const annBodies: string[] = [];
    const bobBodies: string[] = [];
    for (let i = 1; i <= 5; i++) {
      annBodies.push(`a${i}`);
      await aRoom.send(`a${i}`);
    }
    await bLog.waitCount(5);

    // Phase 2: five sends in flight, then the kill without waiting for their acks.
    const pending: Array<Promise<ServerAck>> = [];
    for (let i = 6; i <= 10; i++) {
      annBodies.push(`a${i}`);
      pending.push(aRoom.send(`a${i}`));
    }
    await gw.kill();
    await eventually(
      "both clients notice the outage",
      () => a.client.state !== "online" && b.client.state !== "online",
      {
        state: () => [a.client.state, b.client.state],
      },
    );
    const socketsBeforeRestart = a.ws.sockets.length;

    // Phase 3: sends while offline go to the outbox (both users).
    for (let i = 11; i <= 15; i++) {
      annBodies.push(`a${i}`);
      pending.push(aRoom.send(`a${i}`));
    }
    for (let i = 1; i <= 3; i++) {
      bobBodies.push(`b${i}`);
      pending.push(bRoom.send(`b${i}`));
    }
    const sidePending = [bSideRoom.send("s2"), bSideRoom.send("s3")];
    await eventually("ann's offline sends are queued", () => a.client.outbox.length >= 5, {
      state: () => a.client.outbox,
    });
    assert.ok(
      a.client.outbox.every((e) => e.room === roomId && e.kind === "send"),
      "outbox entries are sends of the room",
    );
    assert.deepEqual(
      b.client.outbox.map((e) => e.body),
      ["b1", "b2", "b3", "s2", "s3"],
      "bob's outbox holds his offline sends in order",
    );

    // Phase 4: the gateway comes back on the same port and data.
    await gw.start();
    const acks = await Promise.all(pending);
    assert.deepEqual(
      (await Promise.all(sidePending)).map((x) => x.seq),
      [2, 3],
    );
    await waitState(a.client, "online");
    await waitState(b.client, "online");
    assert.ok(a.ws.sockets.length > socketsBeforeRestart, "ann reconnected on a new socket");

    const total = 5 + 5 + 5 + 3;
    // Every send acked exactly once, with distinct seqs covering 6..18.
    const ackedSeqs = acks.map((x) => x.seq).sort((x, y) => x - y);
    assertExactSeqs(ackedSeqs, 6, total, "acked seqs of the pending sends");
    await eventually("outboxes drain", () => a.client.outbox.length === 0 && b.client.outbox.length === 0);
    assert.equal(outboxSizes[outboxSizes.length - 1], 0, "last outbox event says empty");

    // Both sides: every message exactly once, in seq order.
    await aLog.waitCount(total);
    await bLog.waitCount(total);
    assertExactSeqs(aLog.seqs, 1, total, "ann");
    assertExactSeqs(bLog.seqs, 1, total, "bob");
    // Each sender's messages in the order they were sent.
    for (const log of [aLog, bLog]) {
      assert.deepEqual(
        log.messages.filter((m) => m.sender === ann.id).map((m) => m.body),
        annBodies,
      );
      assert.deepEqual(
        log.messages.filter((m) => m.sender === bob.id).map((m) => m.body),
        bobBodies,
      );
    }
    // The server stored each exactly once too.
    const history = await api.history(ann, roomId);
    assert.equal(history.length, total);
    assert.equal(new Set(history.map((m) => m.client_msg_id)).size, total, "no duplicate stored");
    assert.equal(aRoom.lastSeq, total);
    assert.equal(bRoom.lastSeq, total);

    await aSide.waitCount(3);
    assertExactSeqs(aSide.seqs, 1, 3, "ann in the second room");
    assert.deepEqual(aSide.bodies, ["s1", "s2", "s3"]);

    // Presence is rebuilt from the fresh snapshots after the restart.
    await eventually("ann sees bob online again", () => aRoom.online.has(bob.id) && aRoom.online.has(ann.id), {
      state: () => [...aRoom.online],
    });

    // And the clients keep working after the outage.
    const after = await bRoom.send("after");
    assert.equal(after.seq, total + 1);
    await aLog.waitCount(total + 1);
    assertExactSeqs(aLog.seqs, 1, total + 1, "ann after");
    // What reached the sockets, before the SDK's dedupe: no duplicate, no gap to heal.
    assertCleanWire(a, "ann");
    assertCleanWire(b, "bob");
  },
);

e2e(
  "two SIGKILLs under continuous traffic from both users: nothing lost, nothing duplicated, per-sender order kept",
  async (h, t) => {
    const gw = await h.gateway();
    const api = new Api(gw.base);
    const ann = await api.register("ann");
    const bob = await api.register("bob");
    const roomId = await api.createRoom(ann, uniq("storm"), [bob]);
    const a = h.client(api, ann, { url: gw.wsUrl });
    const b = h.client(api, bob, { url: gw.wsUrl });
    await Promise.all([a.client.connect(), b.client.connect()]);
    const aRoom = await a.client.join(roomId);
    const bRoom = await b.client.join(roomId);
    const aLog = new RoomLog(aRoom);
    const bLog = new RoomLog(bRoom);

    // Each user fires a send every ~20 ms without waiting for acks, whatever the connection does.
    const PER_USER = 60;
    const fire = async (room: typeof aRoom, prefix: string): Promise<ServerAck[]> => {
      const acks: Array<Promise<ServerAck>> = [];
      for (let i = 1; i <= PER_USER; i++) {
        acks.push(room.send(`${prefix}${i}`));
        await new Promise((r) => setTimeout(r, 20));
      }
      return Promise.all(acks);
    };
    const traffic = Promise.all([fire(aRoom, "a"), fire(bRoom, "b")]);
    for (let k = 0; k < 2; k++) {
      await eventually("some traffic got through", () => bLog.messages.length >= (k + 1) * 20);
      await gw.kill();
      await new Promise((r) => setTimeout(r, 300)); // some sends pile up in the outboxes
      await gw.start();
    }
    const [aAcks, bAcks] = await traffic;
    const total = 2 * PER_USER;
    assertExactSeqs(
      [...aAcks, ...bAcks].map((x) => x.seq).sort((x, y) => x - y),
      1,
      total,
      "acks",
    );
    t.diagnostic(
      `${[...aAcks, ...bAcks].filter((x) => x.duplicate).length} sends were acked as duplicates (stored before a kill, re-sent after)`,
    );
    await aLog.waitCount(total);
    await bLog.waitCount(total);
    assertExactSeqs(aLog.seqs, 1, total, "ann");
    assertExactSeqs(bLog.seqs, 1, total, "bob");
    const inOrder = (log: RoomLog, sender: string, prefix: string): void =>
      assert.deepEqual(
        log.messages.filter((m) => m.sender === sender).map((m) => m.body),
        Array.from({ length: PER_USER }, (_, i) => `${prefix}${i + 1}`),
        `${prefix}: each sender's messages in the order sent`,
      );
    for (const log of [aLog, bLog]) {
      inOrder(log, ann.id, "a");
      inOrder(log, bob.id, "b");
    }
    assert.equal((await api.history(ann, roomId)).length, total, "stored exactly once each");
    assertCleanWire(a, "ann");
    assertCleanWire(b, "bob");
  },
);

e2e("edits, deletes, typing and a join made while the gateway is down are carried over the outage", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("changes"), [bob]);
  const laterId = await api.createRoom(ann, uniq("later"), [bob]);
  const a = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const bLog = new RoomLog(bRoom);
  const iter = bRoom.messages();
  for (const x of ["m1", "m2", "m3"]) await aRoom.send(x);
  await bLog.waitCount(3);

  await gw.kill();
  await eventually("offline", () => a.client.state !== "online" && b.client.state !== "online");
  const edit = aRoom.edit(1, "m1 edited");
  const del = aRoom.delete(2);
  assert.doesNotThrow(() => aRoom.typing(), "typing offline is a no-op, not an error");
  const send = aRoom.send("m4");
  assert.deepEqual(
    a.client.outbox.map((e) => [e.kind, e.seq ?? null, e.body ?? null]),
    [
      ["edit", 1, "m1 edited"],
      ["delete", 2, null],
      ["send", null, "m4"],
    ],
    "edit, delete and send queued in order",
  );
  const joinLater = b.client.join(laterId);

  await gw.start();
  const [editAck, delAck, sendAck] = await Promise.all([edit, del, send]);
  assert.deepEqual([editAck.seq, delAck.seq, sendAck.seq], [4, 5, 6], "applied in the order queued");
  await bLog.waitCount(4);
  await eventually("bob gets the change events", () => bLog.edits.length >= 1 && bLog.deletes.length >= 1);
  assert.deepEqual(
    bLog.edits.map((e) => [e.seq, e.target_seq, e.body]),
    [[4, 1, "m1 edited"]],
  );
  assert.deepEqual(
    bLog.deletes.map((d) => [d.seq, d.target_seq]),
    [[5, 2]],
  );
  assert.deepEqual(bLog.seqs, [1, 2, 3, 6]);
  assert.equal(bRoom.lastSeq, 6);
  const viaIterator: number[] = [];
  for await (const m of iter) {
    viaIterator.push(m.seq);
    if (viaIterator.length === 4) break;
  }
  assert.deepEqual(viaIterator, [1, 2, 3, 6], "the iterator saw the same stream across the outage");

  // The join made while offline completes once the gateway is back.
  const bLater = await joinLater;
  assert.equal(bLater.id, laterId);
  const laterLog = new RoomLog(bLater);
  const aLater = await a.client.join(laterId);
  await aLater.send("in later");
  await laterLog.waitCount(1);
  assert.deepEqual(
    laterLog.messages.map((m) => [m.seq, m.body]),
    [[1, "in later"]],
  );
  assertCleanWire(a, "ann");
  assertCleanWire(b, "bob");
});
