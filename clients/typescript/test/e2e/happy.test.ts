/**
 * Happy path against the real gateway: connect, join, send/ack, receiving
 * another user's messages (events and the async iterator), typing, read
 * markers, presence, edit, delete, and the per-user room_added/room_removed
 * stream.
 */
import assert from "node:assert/strict";

import type {
  ServerMessage,
  ServerPresence,
  ServerRead,
  ServerRoomAdded,
  ServerRoomRemoved,
  ServerRoomSeq,
  ServerRoomUpdated,
  ServerTyping,
} from "../../src/index.ts";
import { Api, RoomLog, assertExactSeqs, e2e, eventually, uniq } from "../harness.ts";

e2e("happy path: send/ack, receive, iterator, typing, read, presence, edit, delete, per-user stream", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("general"), [bob]);

  const a = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await a.client.connect();
  assert.equal(a.client.state, "online");
  assert.equal(a.client.userId, ann.id);
  assert.equal(a.client.hello?.user_id, ann.id);
  assert.ok(a.client.hello?.features?.includes("sync"), "gateway speaks 1.1");

  const aRoom = await a.client.join(roomId);
  assert.equal(aRoom.id, roomId);
  assert.equal(a.client.room(roomId), aRoom, "same Room object for the same id");
  assert.equal(await a.client.join(roomId), aRoom, "joining again gives the same Room");
  assert.deepEqual(
    a.client.rooms.map((r) => r.id),
    [roomId],
  );
  const aLog = new RoomLog(aRoom);
  const aPresence: ServerPresence[] = [];
  aRoom.on("presence", (p: ServerPresence) => {
    aPresence.push(p);
  });
  const aTyping: ServerTyping[] = [];
  aRoom.on("typing", (t: ServerTyping) => {
    aTyping.push(t);
  });
  const aReads: ServerRead[] = [];
  aRoom.on("read", (r: ServerRead) => {
    aReads.push(r);
  });

  // Bob comes online: Ann sees his presence and room.online is updated first.
  let onlineWhenEmitted: boolean | undefined;
  aRoom.once("presence", (p: ServerPresence) => {
    onlineWhenEmitted = aRoom.online.has(p.user);
  });
  await b.client.connect();
  const bRoom = await b.client.join(roomId);
  const bLog = new RoomLog(bRoom);
  const iter = bRoom.messages();
  await eventually("ann sees bob online", () => aPresence.some((p) => p.user === bob.id && p.status === "online"));
  assert.equal(onlineWhenEmitted, true, "room.online updated before the presence event");
  assert.ok(aRoom.online.has(bob.id) && aRoom.online.has(ann.id), `online: ${[...aRoom.online]}`);
  assert.ok(bRoom.online.has(ann.id), "bob's joined snapshot has ann");

  // Ann sends three messages: each acked with consecutive seqs.
  const acks = [];
  for (const body of ["one", "two", "three"]) acks.push(await aRoom.send(body));
  assert.deepEqual(
    acks.map((x) => [x.seq, x.room, x.duplicate]),
    [
      [1, roomId, false],
      [2, roomId, false],
      [3, roomId, false],
    ],
  );
  assert.equal(new Set(acks.map((x) => x.client_msg_id)).size, 3, "a fresh client_msg_id per send");

  // Bob receives them exactly once, in order, through events and the iterator.
  await bLog.waitCount(3);
  const viaIterator: ServerMessage[] = [];
  for await (const m of iter) {
    viaIterator.push(m);
    if (viaIterator.length === 3) break;
  }
  assert.deepEqual(
    viaIterator.map((m) => [m.seq, m.body, m.sender]),
    [
      [1, "one", ann.id],
      [2, "two", ann.id],
      [3, "three", ann.id],
    ],
  );
  // Ann gets her own messages echoed, once each.
  await aLog.waitCount(3);
  assert.deepEqual(
    aLog.messages.map((m) => m.client_msg_id),
    acks.map((x) => x.client_msg_id),
  );
  assert.equal(aRoom.lastSeq, 3);

  // Bob replies; Ann receives it.
  const bAck = await bRoom.send("hi ann");
  assert.equal(bAck.seq, 4);
  await aLog.waitCount(4);
  assert.deepEqual(aLog.messages[3] && [aLog.messages[3].seq, aLog.messages[3].body, aLog.messages[3].sender], [
    4,
    "hi ann",
    bob.id,
  ]);

  // Typing: Bob types, Ann sees it.
  bRoom.typing();
  await eventually("ann sees bob typing", () => aTyping.some((t) => t.user === bob.id && t.room === roomId));

  // Read markers: Bob reads up to 4; Ann sees the marker; Bob's readSeq and unread follow.
  await bRoom.markRead(4);
  await eventually("ann sees bob's read marker", () => aReads.some((r) => r.user === bob.id && r.seq === 4));
  await eventually("bob's readSeq is 4", () => bRoom.readSeq === 4, { state: () => bRoom.readSeq });
  assert.equal(bRoom.unread, 0);
  assert.equal(aRoom.unread, 4, "ann has read nothing yet");

  // Edit and delete: change events with their own seqs, delivered to both.
  const editAck = await aRoom.edit(1, "one (edited)");
  assert.equal(editAck.seq, 5);
  const delAck = await aRoom.delete(2);
  assert.equal(delAck.seq, 6);
  await eventually("bob gets the edit and the delete", () => bLog.edits.length === 1 && bLog.deletes.length === 1, {
    state: () => [bLog.edits, bLog.deletes],
  });
  assert.deepEqual([bLog.edits[0].seq, bLog.edits[0].target_seq, bLog.edits[0].body], [5, 1, "one (edited)"]);
  assert.deepEqual([bLog.deletes[0].seq, bLog.deletes[0].target_seq, bLog.deletes[0].reason], [6, 2, "author"]);
  await eventually("ann gets her own edit and delete", () => aLog.edits.length === 1 && aLog.deletes.length === 1);
  assert.equal(bRoom.lastSeq, 6, "change events advance lastSeq");

  // One more message after the changes: messages and change events share one gap-free seq line.
  await aRoom.send("four");
  await bLog.waitCount(5);
  await aLog.waitCount(5);
  assert.deepEqual(bLog.seqs, [1, 2, 3, 4, 7], "bob: every message exactly once, in order");
  assert.deepEqual(aLog.seqs, [1, 2, 3, 4, 7], "ann: every message exactly once, in order");
  assert.deepEqual(bLog.bodies, ["one", "two", "three", "hi ann", "four"]);
  assert.equal(bLog.edits.length + bLog.deletes.length, 2, "change events exactly once");

  // Per-user stream: Ann creates a room with Bob (both get room_added, no join needed),
  // then removes him (he gets room_removed).
  const bAdded: ServerRoomAdded[] = [];
  const bRemoved: ServerRoomRemoved[] = [];
  const aAdded: ServerRoomAdded[] = [];
  b.client.on("room_added", (f: ServerRoomAdded) => {
    bAdded.push(f);
  });
  b.client.on("room_removed", (f: ServerRoomRemoved) => {
    bRemoved.push(f);
  });
  a.client.on("room_added", (f: ServerRoomAdded) => {
    aAdded.push(f);
  });
  const name = uniq("side");
  const side = await api.createRoom(ann, name, [bob]);
  await eventually("room_added reaches bob and ann", () => bAdded.length >= 1 && aAdded.length >= 1, {
    state: () => [bAdded, aAdded],
  });
  assert.deepEqual(
    bAdded.map((f) => [f.room, f.name, f.role, f.last_seq]),
    [[side, name, "member", 0]],
  );
  assert.deepEqual(
    aAdded.map((f) => [f.room, f.role]),
    [[side, "owner"]],
  );
  // room_seq for a room Bob's socket has not joined; room_updated on a rename.
  const bSeqs: ServerRoomSeq[] = [];
  const bUpdated: ServerRoomUpdated[] = [];
  b.client.on("room_seq", (f: ServerRoomSeq) => {
    bSeqs.push(f);
  });
  b.client.on("room_updated", (f: ServerRoomUpdated) => {
    bUpdated.push(f);
  });
  const aSide = await a.client.join(side);
  await aSide.send("side 1");
  await aSide.send("side 2");
  await eventually("room_seq reaches bob", () => bSeqs.some((f) => f.room === side && f.last_seq === 2), {
    state: () => bSeqs,
  });
  assert.equal(b.client.room(side), undefined, "room_seq does not join the room");
  await api.call("PATCH", `/api/v1/rooms/${side}`, { token: ann.access, body: { name: "renamed" } });
  await eventually("room_updated reaches bob", () => bUpdated.length >= 1);
  assert.deepEqual(
    bUpdated.map((f) => [f.room, f.name]),
    [[side, "renamed"]],
  );

  await api.removeMember(ann, side, bob);
  await eventually("room_removed reaches bob", () => bRemoved.length >= 1);
  assert.deepEqual(
    bRemoved.map((f) => [f.room, f.reason]),
    [[side, "removed"]],
  );

  // leave(): the room is forgotten locally ("removed" with reason "left"), membership unchanged.
  const leftEvents: Array<{ reason: string }> = [];
  aSide.on("removed", (info: { reason: string }) => {
    leftEvents.push(info);
  });
  await aSide.leave();
  assert.deepEqual(leftEvents, [{ reason: "left" }]);
  assert.equal(a.client.room(side), undefined);
  assert.deepEqual(
    a.client.rooms.map((r) => r.id),
    [roomId],
  );

  // Bob goes away for good: Ann sees him offline.
  b.client.close();
  assert.equal(b.client.state, "closed");
  await eventually("ann sees bob offline", () => aPresence.some((p) => p.user === bob.id && p.status === "offline"));
  assert.ok(!aRoom.online.has(bob.id), "room.online drops bob");
  assert.deepEqual(aLog.seqs, [1, 2, 3, 4, 7], "nothing more arrived");
});
