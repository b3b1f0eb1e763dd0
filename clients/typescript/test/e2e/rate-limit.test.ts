/**
 * Rate limiting surfaced to the app (protocol §8): with a tiny send budget
 * (WS_SEND_PER_SEC=2, WS_SEND_BURST=3) a burst of sends is partly refused
 * with `rate_limited`; the SDK reports each refusal as a client "error"
 * event (code rate_limited, retryAfterMs) but does not reject the sends:
 * it waits and retries, so every send is acked exactly once, in order, and
 * the connection is never closed for abuse (4008).
 */
import assert from "node:assert/strict";

import { ChatError } from "../../src/index.ts";
import { Api, RoomLog, assertExactSeqs, e2e, uniq } from "../harness.ts";

e2e("rate limited sends surface as errors yet are all acked exactly once, in order", async (h, t) => {
  const gw = await h.gateway({ env: { WS_SEND_PER_SEC: "2", WS_SEND_BURST: "3" } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("busy"), [bob]);
  const a = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  assert.equal(a.client.hello?.limits.send_burst, 3);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const bLog = new RoomLog(bRoom);

  const N = 9;
  const bodies = Array.from({ length: N }, (_, i) => `burst-${i + 1}`);
  const acks = await Promise.all(bodies.map((body) => aRoom.send(body)));

  const limited = a.errors.filter((e) => e.code === "rate_limited");
  t.diagnostic(`${limited.length} rate_limited errors surfaced for ${N} sends`);
  assert.ok(limited.length >= 1, `rate limits were surfaced: ${JSON.stringify(a.errors.map((e) => e.code))}`);
  for (const e of limited) {
    assert.ok(e instanceof ChatError);
    assert.ok(typeof e.retryAfterMs === "number" && e.retryAfterMs >= 0, `retryAfterMs on ${e.message}`);
  }
  assertExactSeqs(
    acks.map((x) => x.seq).sort((x, y) => x - y),
    1,
    N,
    "acked seqs",
  );
  assert.ok(
    acks.every((x) => x.duplicate === false),
    "nothing was stored twice",
  );
  await bLog.waitCount(N);
  assertExactSeqs(bLog.seqs, 1, N, "bob");
  assert.deepEqual(bLog.bodies, bodies, "stored in the order sent");
  assert.equal(
    a.ws.sockets.length,
    1,
    `no reconnect (no 4008): ${JSON.stringify(a.ws.sockets.map((s) => s.closeCode))}`,
  );
  assert.equal(a.client.outbox.length, 0);
});
