/**
 * The README's quick start: connect, `await client.join(roomId)`, then
 * listen. Messages sent to the room before that first join (by others, or
 * by the app itself before it joined) arrive too: a room without a stored
 * position is joined with `since_seq: 0` by default (README "Client API").
 * `sinceSeq: null` starts at the live edge instead (for large rooms whose
 * history is paged over REST).
 */
import assert from "node:assert/strict";

import { Api, RoomLog, assertCleanWire, assertExactSeqs, e2e, uniq } from "../harness.ts";

e2e("the quick start's first join gets the messages sent before it, then live ones, once each", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(bob, uniq("early"), [ann]);

  // Bob writes before Ann's app ever joined the room.
  const b = h.client(api, bob, { url: gw.wsUrl });
  await b.client.connect();
  const bRoom = await b.client.join(roomId);
  for (const body of ["before-1", "before-2", "before-3"]) await bRoom.send(body);

  // Ann follows the quick start to the letter.
  const a = h.client(api, ann, { url: gw.wsUrl });
  await a.client.connect();
  const room = await a.client.join(roomId);
  const log = new RoomLog(room);
  await bRoom.send("live-4");
  await log.waitCount(4);
  assertExactSeqs(log.seqs, 1, 4, "ann");
  assert.deepEqual(log.bodies, ["before-1", "before-2", "before-3", "live-4"]);
  const join = a.ws.sockets[0].frames.find((f) => f.dir === "out" && f.frame?.type === "join");
  assert.equal(join?.frame?.since_seq, 0, "the first join asked for a replay from 0");
  assertCleanWire(a, "ann");

  // The live edge, on request.
  const c = h.client(api, ann, { url: gw.wsUrl });
  await c.client.connect();
  const edge = await c.client.join(roomId, { sinceSeq: null });
  assert.equal(edge.lastSeq, 4);
  const edgeLog = new RoomLog(edge);
  await bRoom.send("live-5");
  await edgeLog.waitCount(1);
  assert.deepEqual(edgeLog.bodies, ["live-5"], "sinceSeq: null: no replay");
});
