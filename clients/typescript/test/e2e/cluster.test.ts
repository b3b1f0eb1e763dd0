/**
 * Two gateway instances on one PostgreSQL database and a Redis of the
 * test's own; the SDK gets `url: [a, b]`. Instance a is SIGKILLed: the SDK
 * moves to b and resumes, and what another user sent on b meanwhile
 * arrives exactly once. Then a rolling drain of both instances (SIGTERM,
 * restart, the other) under traffic loses and duplicates nothing.
 * Finally a frozen instance (SIGSTOP) is detected by the app heartbeat and
 * the SDK moves to the other one.
 */
import assert from "node:assert/strict";

import type { Room, ServerAck } from "../../src/index.ts";
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
  type Gateway,
} from "../harness.ts";

function connectedTo(kit: ClientKit): string | undefined {
  const s = kit.ws.current();
  return s && s.closedAt === undefined && kit.client.state === "online" ? s.url : undefined;
}

async function onInstance(kit: ClientKit, gw: Gateway): Promise<void> {
  await eventually(`${kit.user.name} online on ${gw.name}`, () => connectedTo(kit)?.startsWith(gw.wsUrl), {
    state: () => [kit.client.state, kit.ws.current()?.url],
  });
}

e2e("two instances on Redis: SIGKILL of a moves the SDK to b; rolling drain of both loses nothing", async (h, t) => {
  const { a: gwA, b: gwB } = await h.cluster();
  const api = new Api(gwA.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("cluster"), [bob]);

  const a = h.client(api, ann, { url: [gwA.wsUrl, gwB.wsUrl] });
  const b = h.client(api, bob, { url: [gwB.wsUrl, gwA.wsUrl] });
  await Promise.all([a.client.connect(), b.client.connect()]);
  await onInstance(a, gwA);
  await onInstance(b, gwB);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const aLog = new RoomLog(aRoom);
  const bLog = new RoomLog(bRoom);
  let total = 0;
  const sendAll = async (room: Room, bodies: string[]): Promise<ServerAck[]> => {
    total += bodies.length;
    return Promise.all(bodies.map((x) => room.send(x)));
  };

  // Across instances through Redis.
  await sendAll(aRoom, ["a1", "a2"]);
  await sendAll(bRoom, ["b1"]);
  await aLog.waitCount(total);
  await bLog.waitCount(total);

  // SIGKILL a: Ann moves to b; Bob (on b) keeps writing meanwhile; Ann writes offline too.
  api.use(gwB.base);
  await gwA.kill();
  const during = sendAll(bRoom, ["b2", "b3", "b4"]);
  const offline = sendAll(aRoom, ["a3", "a4"]);
  await Promise.all([during, offline]);
  await onInstance(a, gwB);
  await aLog.waitCount(total);
  await bLog.waitCount(total);
  assertExactSeqs(aLog.seqs, 1, total, "ann after the kill");
  assertExactSeqs(bLog.seqs, 1, total, "bob after the kill");

  // Rolling drain: a comes back; b drains (both clients move to a), b comes back; a drains.
  await gwA.start();
  const traffic = (async () => {
    for (let i = 1; i <= 10; i++) {
      await sendAll(i % 2 ? aRoom : bRoom, [`r${i}`]);
      await new Promise((r) => setTimeout(r, 150));
    }
  })();
  api.use(gwA.base);
  assert.equal(await gwB.terminate(), 0, "b drains and exits cleanly");
  await onInstance(a, gwA);
  await onInstance(b, gwA);
  await gwB.start();
  api.use(gwB.base);
  assert.equal(await gwA.terminate(), 0, "a drains and exits cleanly");
  await onInstance(a, gwB);
  await onInstance(b, gwB);
  await traffic;
  await gwA.start();

  await aLog.waitCount(total);
  await bLog.waitCount(total);
  assertExactSeqs(aLog.seqs, 1, total, "ann after the rolling drain");
  assertExactSeqs(bLog.seqs, 1, total, "bob after the rolling drain");
  assert.deepEqual(aLog.bodies, bLog.bodies, "both saw the same sequence");
  const drains = a.ws.sockets.filter((s) => s.closeCode === 1001).length;
  assert.ok(drains >= 2, `ann went through both drains: ${JSON.stringify(a.ws.sockets.map((s) => s.closeCode))}`);
  t.diagnostic(
    `ann's sockets: ${JSON.stringify(a.ws.sockets.map((s) => [s.url.replace(/^ws:\/\/127.0.0.1:/, ""), s.closeCode]))}`,
  );
  const stored = await api.history(ann, roomId);
  assert.equal(stored.length, total, "stored exactly once each");
  assert.equal(a.client.outbox.length + b.client.outbox.length, 0);
  assertCleanWire(a, "ann");
  assertCleanWire(b, "bob");
});

e2e("app heartbeat: a frozen instance (SIGSTOP) is detected and the SDK moves to the other url", async (h) => {
  const { a: gwA, b: gwB } = await h.cluster({ WS_HEARTBEAT_MS: "1000" });
  const api = new Api(gwB.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("frozen"), [bob]);
  const a = h.client(api, ann, { url: [gwA.wsUrl, gwB.wsUrl], heartbeat: "app" });
  const b = h.client(api, bob, { url: [gwB.wsUrl] });
  await Promise.all([a.client.connect(), b.client.connect()]);
  assert.equal(a.client.hello?.heartbeat, "app", "app heartbeats negotiated");
  assert.ok(a.ws.sockets[0].url.includes("heartbeat=app"), `?heartbeat=app on the URL: ${a.ws.sockets[0].url}`);
  await onInstance(a, gwA);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const aLog = new RoomLog(aRoom);
  await bRoom.send("before");
  await aLog.waitCount(1);

  gwA.pause();
  h.onCleanup(() => gwA.resume());
  await bRoom.send("while a is frozen");
  await onInstance(a, gwB);
  await aLog.waitCount(2);
  await aRoom.send("from b");
  await aLog.waitCount(3);
  assertExactSeqs(aLog.seqs, 1, 3, "ann");
  assert.deepEqual(aLog.bodies, ["before", "while a is frozen", "from b"]);
  gwA.resume();
  await waitState(a.client, "online");
  assertCleanWire(a, "ann");
  assertCleanWire(b, "bob");
});
