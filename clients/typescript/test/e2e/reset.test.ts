/**
 * History reset (protocol §17): an operator resets a room's history. A
 * joined client gets the room's "reset" event at once and takes the new
 * epoch; a client that was away resumes with its stored (old) epoch and
 * gets "reset" instead of a replay, then live messages continue.
 */
import assert from "node:assert/strict";

import { MemoryStore, type ServerHistoryGone, type ServerReset } from "../../src/index.ts";
import { ADMIN_TOKEN, Api, RoomLog, e2e, eventually, uniq } from "../harness.ts";

e2e("history reset: live reset event and a reset on resume with the old epoch", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("reset"), [bob]);
  const a = h.client(api, ann, { url: gw.wsUrl });
  const bobStore = new MemoryStore();
  const b1 = h.client(api, bob, { url: gw.wsUrl, store: bobStore });
  await Promise.all([a.client.connect(), b1.client.connect()]);
  const aRoom = await a.client.join(roomId);
  const b1Room = await b1.client.join(roomId);
  const aLog = new RoomLog(aRoom);
  const aResets: Array<ServerReset | ServerHistoryGone> = [];
  aRoom.on("reset", (r: ServerReset | ServerHistoryGone) => {
    aResets.push(r);
  });
  for (const x of ["m1", "m2", "m3"]) await aRoom.send(x);
  await eventually("bob has 3", () => b1Room.lastSeq === 3);
  const oldEpoch = aRoom.epoch;
  assert.ok(oldEpoch, "the epoch is known from joined");

  // Bob's app goes away; the history is reset; Ann writes two more.
  b1.client.close();
  const reset = await api.call<{ epoch: string; last_seq: number }>(
    "POST",
    `/api/v1/admin/rooms/${roomId}/reset-history`,
    { token: ADMIN_TOKEN },
  );
  assert.equal(reset.last_seq, 3);
  await eventually("ann's live reset event", () => aResets.length >= 1);
  assert.deepEqual(
    aResets.map((r) => [r.type, "epoch" in r ? r.epoch : undefined, "last_seq" in r ? r.last_seq : undefined]),
    [["reset", reset.epoch, 3]],
  );
  assert.equal(aRoom.epoch, reset.epoch, "ann's room takes the new epoch");
  await aRoom.send("m4");
  await aRoom.send("m5");
  await aLog.waitCount(5);
  assert.deepEqual(aLog.seqs, [1, 2, 3, 4, 5], "seqs keep counting after the reset");

  // Bob's app restarts with the old epoch stored: reset instead of a replay.
  const b2 = h.client(api, bob, { url: gw.wsUrl, store: bobStore });
  await b2.client.restore();
  const b2Room = b2.client.room(roomId);
  assert.ok(b2Room);
  assert.equal(b2Room.epoch, oldEpoch, "the old epoch was persisted");
  const b2Log = new RoomLog(b2Room);
  const bResets: Array<ServerReset | ServerHistoryGone> = [];
  b2Room.on("reset", (r: ServerReset | ServerHistoryGone) => {
    bResets.push(r);
  });
  await b2.client.connect();
  await eventually("bob's reset on resume", () => bResets.length >= 1);
  assert.deepEqual(
    bResets.map((r) => [r.type, "epoch" in r ? r.epoch : undefined, "last_seq" in r ? r.last_seq : undefined]),
    [["reset", reset.epoch, 5]],
  );
  await eventually("bob's room at the new epoch", () => b2Room.epoch === reset.epoch && b2Room.lastSeq === 5, {
    state: () => [b2Room.epoch, b2Room.lastSeq],
  });
  assert.deepEqual(b2Log.seqs, [], "nothing replayed from the reset history");
  await aRoom.send("m6");
  await b2Log.waitCount(1);
  assert.deepEqual(
    b2Log.messages.map((m) => [m.seq, m.body]),
    [[6, "m6"]],
  );
});
