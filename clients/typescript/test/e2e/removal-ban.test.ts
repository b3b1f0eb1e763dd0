/**
 * Removal from a room (REST) reaches the SDK as the Room's "removed" event
 * and the client-level room_removed: the room is forgotten (also by the
 * store: a reconnect does not resume it) and sends to it are refused with
 * `forbidden`. A ban closes the socket with 4003: the client goes to
 * "closed", reports a ChatError and never reconnects.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";

import { ChatError, type ServerRoomRemoved } from "../../src/index.ts";
import { Api, RoomLog, e2e, eventually, uniq, waitState } from "../harness.ts";

e2e("removal from a room: removed event, room forgotten, sends refused with forbidden", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("club"), [bob]);
  const keepId = await api.createRoom(ann, uniq("keep"), [bob]);
  const b = h.client(api, bob, { url: gw.wsUrl });
  await b.client.connect();
  const bRoom = await b.client.join(roomId);
  const bKeep = await b.client.join(keepId);
  const bLog = new RoomLog(bRoom);
  const removedEvents: Array<{ reason: string }> = [];
  bRoom.on("removed", (info: { reason: string }) => {
    removedEvents.push(info);
  });
  const userStream: ServerRoomRemoved[] = [];
  b.client.on("room_removed", (f: ServerRoomRemoved) => {
    userStream.push(f);
  });
  await bRoom.send("hello club");
  await bLog.waitCount(1);

  await api.removeMember(ann, roomId, bob);
  await eventually("the room's removed event", () => removedEvents.length >= 1);
  assert.deepEqual(removedEvents, [{ reason: "removed" }], "exactly one removed event");
  await eventually("the per-user room_removed", () => userStream.length >= 1);
  assert.deepEqual(
    userStream.map((f) => [f.room, f.reason]),
    [[roomId, "removed"]],
  );
  assert.equal(b.client.room(roomId), undefined, "room forgotten");
  assert.deepEqual(
    b.client.rooms.map((r) => r.id),
    [keepId],
  );

  // Sends to it are refused with forbidden, through the old Room object and a new join.
  await assert.rejects(bRoom.send("let me in"), (e: unknown) => e instanceof ChatError && e.code === "forbidden");
  await assert.rejects(b.client.join(roomId), (e: unknown) => e instanceof ChatError && e.code === "forbidden");
  assert.equal(b.client.outbox.length, 0, "a refused send does not stay in the outbox");

  // After a reconnect the removed room is not resumed; the other one is.
  await api.disconnect(bob, 4000, "test reconnect");
  await eventually("bob reconnected", () => b.ws.sockets.length >= 2 && b.client.state === "online");
  assert.equal(b.client.room(roomId), undefined, "still forgotten after a reconnect");
  const keepAck = await bKeep.send("still in keep");
  assert.equal(keepAck.seq, 1);
  // The removed room got nothing new on the Room object.
  assert.deepEqual(bLog.seqs, [1]);
});

e2e("ban: close 4003, state closed, a ChatError, no reconnect", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("banned"), [bob]);
  const b = h.client(api, bob, { url: gw.wsUrl });
  await b.client.connect();
  const bRoom = await b.client.join(roomId);
  await bRoom.send("before the ban");

  await api.ban(bob);
  await waitState(b.client, "closed");
  assert.equal(b.ws.sockets[0].closeCode, 4003);
  const closedState = b.states.find((s) => s.state === "closed");
  assert.equal(closedState?.info?.code, 4003, `closed state reports 4003: ${JSON.stringify(b.states)}`);
  assert.ok(
    b.errors.some((e) => e instanceof ChatError && e.closeCode === 4003),
    `a ChatError with closeCode 4003 was emitted: ${JSON.stringify(b.errors.map((e) => [e.code, e.closeCode]))}`,
  );
  // A send after the ban is refused rather than queued forever.
  await assert.rejects(bRoom.send("after"), (e: unknown) => e instanceof ChatError);
  // No reconnect, ever: give it well beyond the backoff ceiling (1 s here).
  await sleep(2500);
  assert.equal(b.ws.sockets.length, 1, "no reconnect after 4003");
  assert.equal(b.client.state, "closed");

  // A new client of the banned user, with a still-valid access token (a refresh would be refused):
  // the handshake is refused (403) and connect() rejects for good.
  const stillValid = bob.access;
  const b2 = h.client(api, bob, { url: gw.wsUrl, token: async () => stillValid });
  await assert.rejects(b2.client.connect(), (e: unknown) => e instanceof ChatError && e.code === "forbidden");
  assert.equal(b2.client.state, "closed");
});
