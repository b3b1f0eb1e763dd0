/**
 * Protocol 1.2 against the real gateway: change events (edit, delete) take
 * seqs of their own in the room's order, so the SDK's sequencer processes
 * them like messages (no gap, no re-join); a room joined while it was empty
 * (last_seq 0) is resumed with `since_seq: 0`, after an app restart and after
 * a connection lost without a close frame (1006); `not_author` refuses that
 * edit only; with edits off the SDK refuses an edit locally and still deletes.
 */
import assert from "node:assert/strict";

import { ChatError } from "../../src/index.ts";
import { Api, RoomLog, assertCleanWire, e2e, eventually, uniq, waitState, type RawFrame } from "../harness.ts";

/**
 * The since_seq of each room's first join or sync entry on one socket: the
 * resume's ask (undefined: none). Later asks (a gap's re-join) are not it.
 */
function asks(frames: RawFrame[]): Record<string, number | undefined> {
  const out: Record<string, number | undefined> = {};
  const first = (room: unknown, since: unknown) => {
    if (!(String(room) in out)) out[String(room)] = since as number | undefined;
  };
  for (const { dir, frame: f } of frames) {
    if (dir !== "out" || !f) continue;
    if (f.type === "join") first(f.room, f.since_seq);
    if (f.type === "sync") for (const e of f.rooms as Array<Record<string, unknown>>) first(e.room, e.since_seq);
  }
  return out;
}

e2e("1.2: change events keep the seq order; an empty room resumes from 0 after a restart and a 1006; not_author is per request", async (h) => {
  const gw = await h.gateway({ env: { EDIT_WINDOW_SECS: "120" } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const busy = await api.createRoom(ann, uniq("busy"), [bob]);
  const empty = await api.createRoom(ann, uniq("empty"), [bob]);

  const a = h.client(api, ann, { url: gw.wsUrl });
  await a.client.connect();
  assert.equal(a.client.serverVersion, "1.2");
  assert.equal(a.client.editWindowMs, 120_000, "hello.limits.edit_window_ms in the typed API");
  assert.deepEqual([a.client.canEdit, a.client.canDelete], [true, true]);
  const aBusy = await a.client.join(busy);
  const aEmpty = await a.client.join(empty);

  const b = h.client(api, bob, { url: gw.wsUrl });
  await b.client.connect();
  const bBusy = await b.client.join(busy);
  const bEmpty = await b.client.join(empty, { sinceSeq: null });
  assert.equal(bEmpty.lastSeq, 0, "joined at the live edge of an empty room");
  const log = new RoomLog(bBusy);
  const emptyLog = new RoomLog(bEmpty);

  // Messages and change events interleaved: seqs 1..4 in one order.
  assert.equal((await aBusy.send("one")).seq, 1);
  assert.equal((await aBusy.edit(1, "one, edited")).seq, 2);
  assert.equal((await aBusy.send("two")).seq, 3);
  assert.equal((await aBusy.delete(3)).seq, 4);
  await eventually("bob gets 2 messages, an edit and a delete", () => bBusy.lastSeq === 4, {
    state: () => ({ lastSeq: bBusy.lastSeq, seqs: log.seqs, gaps: b.client.gapRecoveries }),
  });
  assert.deepEqual(log.seqs, [1, 3]);
  assert.deepEqual([log.edits.map((e) => e.seq), log.deletes.map((d) => d.seq)], [[2], [4]]);
  assert.equal(b.client.gapRecoveries, 0, "no change event was taken for a gap");

  // Bob may not edit Ann's message: that edit is refused, the room stays joined.
  await assert.rejects(bBusy.edit(1, "not mine"), (e: ChatError) => e.code === "not_author" && e.room === busy);
  assert.equal(b.client.room(busy), bBusy, "not_author does not drop the room");
  assert.equal(b.client.outbox.length, 0);

  // App restart: Bob's app closes; Ann writes to the empty room and edits in busy meanwhile.
  await b.client.flush();
  b.client.close();
  assert.equal((await aEmpty.send("while away")).seq, 1);
  assert.equal((await aBusy.edit(1, "one, edited twice")).seq, 5);
  const b2 = h.client(api, bob, { url: gw.wsUrl, store: b.store });
  await b2.client.connect();
  const b2Empty = b2.client.room(empty)!;
  const b2Busy = b2.client.room(busy)!;
  const log2 = new RoomLog(b2Busy);
  const emptyLog2 = new RoomLog(b2Empty);
  assert.deepEqual(asks(b2.ws.sockets[0].frames), { [busy]: 4, [empty]: 0 }, "resumed from the store, since_seq 0 included");
  await eventually("the message sent to the empty room while away", () => emptyLog2.messages.length === 1, {
    state: () => emptyLog2.seqs,
  });
  await eventually("the edit made while away", () => log2.edits.length === 1, { state: () => b2Busy.lastSeq });
  assert.deepEqual([emptyLog2.bodies, log2.edits[0].seq, log2.edits[0].body], [["while away"], 5, "one, edited twice"]);
  assert.equal(emptyLog.messages.length, 0, "the closed client got nothing");

  // A connection lost without a close frame (SIGKILL: 1006): backoff, then resume from what is held.
  await gw.kill();
  await eventually("bob sees the loss", () => b2.client.state !== "online");
  await gw.start();
  await waitState(b2.client, "online");
  await eventually("bob resumed on a new socket", () => b2.ws.sockets.length >= 2 && Object.keys(asks(b2.ws.current()!.frames)).length === 2, {
    state: () => b2.ws.sockets.length,
  });
  assert.deepEqual(asks(b2.ws.current()!.frames), { [busy]: 5, [empty]: 1 });
  const lost = b2.states.find((s) => s.state === "reconnecting");
  assert.equal(lost?.info?.code, 1006, "the loss is reported as 1006");
  await aEmpty.send("after the restart");
  await aBusy.delete(1);
  await eventually("both live after the resume", () => emptyLog2.messages.length === 2 && log2.deletes.length === 1, {
    state: () => ({ empty: emptyLog2.seqs, deletes: log2.deletes.length }),
  });
  assert.deepEqual([b2Empty.lastSeq, b2Busy.lastSeq], [2, 6]);
  assertCleanWire(b2, "bob after the restart");
});

e2e("1.2 with edits off (EDIT_WINDOW_SECS=0): the SDK refuses an edit locally and still deletes", async (h) => {
  const gw = await h.gateway({ env: { EDIT_WINDOW_SECS: "0" } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const roomId = await api.createRoom(ann, uniq("noedits"));
  const a = h.client(api, ann, { url: gw.wsUrl });
  await a.client.connect();
  assert.equal(a.client.editWindowMs, 0);
  assert.deepEqual([a.client.canEdit, a.client.canDelete], [false, true], `features ${JSON.stringify(a.client.hello?.features)}`);
  const room = await a.client.join(roomId);
  assert.equal((await room.send("keep me?")).seq, 1);
  await assert.rejects(room.edit(1, "x"), (e: ChatError) => e.code === "bad_request");
  assert.equal((await room.delete(1)).seq, 2, "deletes are served with edits off");
  const out = a.ws.sockets.flatMap((s) => s.frames).filter((f) => f.dir === "out").map((f) => f.frame?.type);
  assert.ok(!out.includes("edit"), "no edit frame was sent");
  assert.equal(a.client.outbox.length, 0);
});
