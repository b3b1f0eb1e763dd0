/**
 * Rate limiting (protocol §8) with a tight send budget (WS_SEND_PER_SEC=20,
 * WS_SEND_BURST=5): a burst of 300 sends queued at once is paced by the SDK
 * to `hello.limits` (send_per_sec, send_burst), so the server refuses at most
 * a handful with `rate_limited` (counted on the wire, not from the SDK's
 * events) instead of one in two; every send is acked exactly once, stored in
 * the order queued, and the connection is never closed for abuse (4008).
 * Any refusal that does happen surfaces as a client "error" event with
 * retryAfterMs and is re-sent, never rejected (the refusal path itself is
 * unit-tested on the fake socket: "rate_limited sends wait retry_after_ms…").
 */
import assert from "node:assert/strict";

import { ChatError } from "../../src/index.ts";
import { Api, RoomLog, assertExactSeqs, e2e, uniq } from "../harness.ts";

/** "A handful": refusals allowed for clock skew between the SDK's bucket and the server's. */
const HANDFUL = 5;

e2e(
  "a burst of 300 outbox sends is paced to hello.limits: at most a handful refused, none lost, in order",
  async (h, t) => {
    const gw = await h.gateway({ env: { WS_SEND_PER_SEC: "20", WS_SEND_BURST: "5" } });
    const api = new Api(gw.base);
    const ann = await api.register("ann");
    const bob = await api.register("bob");
    const roomId = await api.createRoom(ann, uniq("busy"), [bob]);
    const a = h.client(api, ann, { url: gw.wsUrl });
    const b = h.client(api, bob, { url: gw.wsUrl });
    await Promise.all([a.client.connect(), b.client.connect()]);
    assert.equal(a.client.hello?.limits.send_burst, 5);
    assert.equal(a.client.hello?.limits.send_per_sec, 20);
    const aRoom = await a.client.join(roomId);
    const bRoom = await b.client.join(roomId);
    const bLog = new RoomLog(bRoom);

    const N = 300;
    const bodies = Array.from({ length: N }, (_, i) => `burst-${i + 1}`);
    const started = Date.now();
    const acks = await Promise.all(bodies.map((body) => aRoom.send(body)));

    // Refusals as the server sent them (raw frames on Ann's sockets).
    const refusals = a.ws.sockets.flatMap((s) =>
      s.frames.filter((f) => f.dir === "in" && f.frame?.type === "error" && f.frame.code === "rate_limited"),
    ).length;
    const surfaced = a.errors.filter((e) => e.code === "rate_limited");
    t.diagnostic(`${N} sends in ${Date.now() - started} ms; ${refusals} rate_limited refusals on the wire`);
    assert.ok(refusals <= HANDFUL, `${refusals} rate_limited refusals for ${N} sends (at most ${HANDFUL})`);
    assert.equal(surfaced.length, refusals, "each refusal surfaced as a client error event");
    for (const e of surfaced) {
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
  },
  { timeoutMs: 180_000 },
);
