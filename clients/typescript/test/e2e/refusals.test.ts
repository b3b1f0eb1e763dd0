/**
 * Definitive refusals reach the app as typed ChatErrors and never stay in
 * the outbox: too_large, conflict (a client_msg_id reused with another
 * body), a removal that happened while the client was offline (the resume
 * answers forbidden for that room: the room is forgotten and its queued
 * send rejected), and a deleted room. A retried send with the same
 * client_msg_id and body is a duplicate, delivered once.
 */
import assert from "node:assert/strict";

import { ChatError } from "../../src/index.ts";
import { Api, RoomLog, e2e, eventually, freePort, uniq, waitState } from "../harness.ts";

function isCode(code: string): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof ChatError, `a ChatError: ${String(e)}`);
    assert.equal(e.code, code, `code ${code}: ${e.message}`);
    return true;
  };
}

e2e("too_large, conflict and duplicate client_msg_ids", async (h) => {
  const gw = await h.gateway({ env: { WS_MAX_BODY_BYTES: "600", WS_MAX_FRAME_BYTES: "4096" } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("refuse"), [bob]);
  const a = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  const aRoom = await a.client.join(roomId);
  const bLog = new RoomLog(await b.client.join(roomId));

  await assert.rejects(aRoom.send("x".repeat(601)), isCode("too_large"));
  const first = await aRoom.send("original", { clientMsgId: "fixed-id-1" });
  assert.equal(first.duplicate, false);
  const again = await aRoom.send("original", { clientMsgId: "fixed-id-1" });
  assert.deepEqual([again.seq, again.duplicate], [first.seq, true], "a retry is acked with the original seq");
  await assert.rejects(aRoom.send("something else", { clientMsgId: "fixed-id-1" }), isCode("conflict"));
  assert.equal(a.client.outbox.length, 0, "refused sends left the outbox");
  await aRoom.send("last");
  await bLog.waitCount(2);
  assert.deepEqual(
    bLog.messages.map((m) => [m.seq, m.body]),
    [
      [1, "original"],
      [2, "last"],
    ],
  );
});

e2e("removed while offline: the resume forgets the room and rejects its queued send with forbidden", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const gone = await api.createRoom(ann, uniq("gone"), [bob]);
  const kept = await api.createRoom(ann, uniq("kept"), [bob]);
  // Bob's way to the gateway can be cut (a URL nobody listens on) while the gateway stays up for REST.
  const nowhere = `ws://127.0.0.1:${await freePort()}/ws`;
  let cut = false;
  const b = h.client(api, bob, { url: () => (cut ? nowhere : gw.wsUrl) });
  await b.client.connect();
  const bGone = await b.client.join(gone);
  const bKept = await b.client.join(kept);
  const removed: Array<{ reason: string }> = [];
  bGone.on("removed", (info: { reason: string }) => {
    removed.push(info);
  });

  cut = true;
  await api.disconnect(bob, 4000, "network gone");
  await eventually("offline", () => b.client.state !== "online");
  const queuedGone = bGone.send("to a room I am no longer in");
  queuedGone.catch(() => undefined);
  const queuedKept = bKept.send("to a room I am still in");
  // The owner removes Bob while he is away; then Bob's network comes back.
  await api.removeMember(ann, gone, bob);
  assert.equal(b.client.room(gone), bGone, "not known yet: membership changes are not replayed (§15)");
  cut = false;

  await assert.rejects(queuedGone, isCode("forbidden"));
  const ack = await queuedKept;
  assert.equal(ack.seq, 1);
  await eventually("the room is forgotten", () => b.client.room(gone) === undefined && removed.length >= 1, {
    state: () => [b.client.rooms.map((r) => r.id), removed],
  });
  assert.equal(removed.length, 1, "one removed event");
  assert.deepEqual(
    b.client.rooms.map((r) => r.id),
    [kept],
  );
  await waitState(b.client, "online");
  assert.equal(b.client.outbox.length, 0);
});

e2e("a deleted room: removed event with reason room_deleted", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("doomed"), [bob]);
  const b = h.client(api, bob, { url: gw.wsUrl });
  await b.client.connect();
  const bRoom = await b.client.join(roomId);
  const removed: Array<{ reason: string }> = [];
  bRoom.on("removed", (info: { reason: string }) => {
    removed.push(info);
  });
  await api.call("DELETE", `/api/v1/rooms/${roomId}`, { token: ann.access });
  await eventually("removed event", () => removed.length >= 1);
  assert.deepEqual(removed, [{ reason: "room_deleted" }]);
  assert.equal(b.client.room(roomId), undefined);
  await assert.rejects(bRoom.send("anyone?"), isCode("forbidden"));
});
