/**
 * Drain (protocol §11): a close 1001 with `drain; reconnect_after_ms=N`
 * makes the SDK wait at least N ms (its jitter only adds) before the next
 * attempt, then reconnect and resume with nothing lost. Once with the
 * gateway's own SIGTERM drain (random N, the process exits and is started
 * again), once with an operator's 1001 close carrying a known N.
 */
import assert from "node:assert/strict";

import type { ServerAck } from "../../src/index.ts";
import {
  Api,
  RoomLog,
  assertCleanWire,
  assertExactSeqs,
  e2e,
  eventually,
  uniq,
  waitState,
  type ClientKit,
  type SocketRecord,
} from "../harness.ts";

/** Timer granularity: Node may fire a timer a millisecond or two "early" relative to Date.now(). */
const CLOCK_SLACK_MS = 15;

function drainDelay(rec: SocketRecord): number {
  const m = /reconnect_after_ms=(\d+)/.exec(rec.closeReason ?? "");
  assert.ok(m, `close reason carries reconnect_after_ms: ${rec.closeReason}`);
  return Number(m[1]);
}

/** The next socket the SDK opened after `rec` closed was created no sooner than the announced delay. */
function assertHonoured(kit: ClientKit, index: number, log: (msg: string) => void): void {
  const closed = kit.ws.sockets[index];
  const next = kit.ws.sockets[index + 1];
  assert.ok(closed?.closedAt !== undefined && next, "a close then a new socket");
  assert.equal(closed.closeCode, 1001, `drain close code (${closed.closeReason})`);
  const n = drainDelay(closed);
  const waited = next.createdAt - closed.closedAt;
  assert.ok(waited >= n - CLOCK_SLACK_MS, `${kit.user.name}: reconnected after ${waited} ms, announced ${n} ms`);
  log(`${kit.user.name}: drain announced ${n} ms, next attempt after ${waited} ms`);
  const st = kit.states.find((s) => s.info?.code === 1001);
  assert.ok(st, `a state change reports the 1001 close: ${JSON.stringify(kit.states)}`);
  if (st.info?.delayMs !== undefined) assert.ok(st.info.delayMs >= n, `announced delayMs ${st.info.delayMs} >= ${n}`);
}

e2e("SIGTERM drain: 1001 + reconnect_after_ms honoured, then resume without loss", async (h, t) => {
  const gw = await h.gateway({ env: { DRAIN_RECONNECT_MAX_MS: "3000" } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("drain"), [bob]);
  const a = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const aLog = new RoomLog(aRoom);
  const bLog = new RoomLog(bRoom);
  for (let i = 1; i <= 3; i++) await aRoom.send(`a${i}`);

  // Sends racing the drain, then the drain itself; the process exits.
  const pending: Array<Promise<ServerAck>> = [aRoom.send("a4"), aRoom.send("a5")];
  const code = await gw.terminate();
  assert.equal(code, 0, `clean exit after drain:\n${gw.tail(20)}`);
  await eventually(
    "both sockets closed by the drain",
    () => a.ws.sockets[0]?.closedAt !== undefined && b.ws.sockets[0]?.closedAt !== undefined,
  );
  assert.equal(a.ws.sockets[0].closeCode, 1001);
  assert.equal(b.ws.sockets[0].closeCode, 1001);
  // Offline send while the gateway is gone.
  pending.push(bRoom.send("b1"));
  await gw.start();

  await Promise.all(pending);
  await waitState(a.client, "online");
  await waitState(b.client, "online");
  assertHonoured(a, 0, (m) => t.diagnostic(m));
  assertHonoured(b, 0, (m) => t.diagnostic(m));
  await aLog.waitCount(6);
  await bLog.waitCount(6);
  assertExactSeqs(aLog.seqs, 1, 6, "ann");
  assertExactSeqs(bLog.seqs, 1, 6, "bob");
  // a4/a5 raced the drain: when the server closed before storing them, Ann
  // re-sends them after her own drain delay, which may end after Bob's (b1).
  // Each sender's order holds; the order between two senders is not promised.
  assert.deepEqual(bLog.bodies.slice(0, 3), ["a1", "a2", "a3"]);
  assert.deepEqual(bLog.bodies.filter((b) => b.startsWith("a")), ["a1", "a2", "a3", "a4", "a5"]);
  assert.deepEqual([...bLog.bodies].sort(), ["a1", "a2", "a3", "a4", "a5", "b1"]);
  assertCleanWire(a, "ann");
  assertCleanWire(b, "bob");
});

e2e("operator 1001 drain close with a known reconnect_after_ms is waited out", async (h, t) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("drain2"), [bob]);
  const a = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const aLog = new RoomLog(aRoom);
  await bRoom.send("before");
  await aLog.waitCount(1);

  await api.disconnect(ann, 1001, "drain; reconnect_after_ms=1500");
  await eventually("ann's socket closed", () => a.ws.sockets[0]?.closedAt !== undefined);
  // Bob writes while Ann waits out the delay.
  await bRoom.send("during");
  await bRoom.send("during2");
  await eventually("ann reconnects", () => a.ws.sockets.length >= 2 && a.client.state === "online", {
    state: () => a.client.state,
  });
  assertHonoured(a, 0, (m) => t.diagnostic(m));
  assert.equal(drainDelay(a.ws.sockets[0]), 1500);
  await aLog.waitCount(3);
  assertExactSeqs(aLog.seqs, 1, 3, "ann");
  assert.deepEqual(aLog.bodies, ["before", "during", "during2"]);
  assert.equal(a.ws.sockets.length, 2, "one reconnect, no storm");
  assertCleanWire(a, "ann");
  assertCleanWire(b, "bob");
});
