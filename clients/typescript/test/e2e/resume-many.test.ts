/**
 * Bulk resume over many rooms (protocol §14) with a small
 * WS_MAX_SYNC_ROOMS, so the SDK must split its `sync` into several frames;
 * and a second device of the same user: own messages and own read markers
 * reach the other device.
 */
import assert from "node:assert/strict";

import { Api, RoomLog, assertExactSeqs, e2e, eventually, uniq, waitState } from "../harness.ts";

e2e("bulk resume of 5 rooms with max_sync_rooms=2: every room resumed, nothing lost", async (h) => {
  const gw = await h.gateway({ env: { WS_MAX_SYNC_ROOMS: "2" } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const rooms: string[] = [];
  for (let i = 0; i < 5; i++) rooms.push(await api.createRoom(bob, uniq(`r${i}`), [ann]));
  const a = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  assert.equal(a.client.hello?.limits.max_sync_rooms, 2);
  const logs = new Map<string, RoomLog>();
  for (const id of rooms) logs.set(id, new RoomLog(await a.client.join(id)));
  const bRooms = await Promise.all(rooms.map((id) => b.client.join(id)));
  for (const r of bRooms) await r.send("one");
  for (const log of logs.values()) await log.waitCount(1);

  // Ann is told to come back in 1.5 s; Bob writes to every room meanwhile.
  await api.disconnect(ann, 1001, "drain; reconnect_after_ms=1500");
  await eventually("ann's socket closed", () => a.ws.sockets[0].closedAt !== undefined);
  for (const r of bRooms) await r.send("two");
  await eventually("ann back online", () => a.ws.sockets.length >= 2 && a.client.state === "online");
  for (const [id, log] of logs) {
    await log.waitCount(2, `room ${id}`);
    assertExactSeqs(log.seqs, 1, 2, `room ${id}`);
    assert.deepEqual(log.bodies, ["one", "two"]);
  }
  assert.equal(a.ws.sockets.length, 2, "one reconnect");
  assert.ok(
    !a.errors.some((e) => e.code === "limit_exceeded"),
    `no sync over the limit: ${a.errors.map((e) => e.code)}`,
  );
});

e2e("a second device of the same user sees its own messages and read markers", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("devices"), [bob]);
  const phone = h.client(api, ann, { url: gw.wsUrl });
  const laptop = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([phone.client.connect(), laptop.client.connect(), b.client.connect()]);
  const pRoom = await phone.client.join(roomId);
  const lRoom = await laptop.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const lLog = new RoomLog(lRoom);
  await bRoom.send("hi");
  await pRoom.send("from my phone");
  await lLog.waitCount(2);
  assert.deepEqual(
    lLog.messages.map((m) => [m.seq, m.sender, m.body]),
    [
      [1, bob.id, "hi"],
      [2, ann.id, "from my phone"],
    ],
  );
  assert.equal(lRoom.unread, 2);
  await pRoom.markRead(2);
  await eventually("the laptop's read marker follows the phone's", () => lRoom.readSeq === 2, {
    state: () => lRoom.readSeq,
  });
  assert.equal(lRoom.unread, 0);
  await waitState(laptop.client, "online");
});
