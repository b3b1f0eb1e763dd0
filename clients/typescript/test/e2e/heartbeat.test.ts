/**
 * App-level heartbeat (protocol §9): with `heartbeat: "app"` and a short
 * server heartbeat (WS_HEARTBEAT_MS=1000), the SDK answers the server's
 * `ping` frames (so a quiet connection is never idle-closed, 4002), and a
 * frozen gateway (SIGSTOP: the TCP connection stays open but nothing
 * comes) is detected as dead; once the gateway is continued (SIGCONT) the
 * SDK reconnects and resumes without loss.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";

import { Api, RoomLog, assertExactSeqs, e2e, eventually, uniq, waitState } from "../harness.ts";

e2e("app heartbeat: quiet connection stays up; frozen gateway detected; reconnect after SIGCONT", async (h, t) => {
  const gw = await h.gateway({ env: { WS_HEARTBEAT_MS: "1000", WS_IDLE_TIMEOUT_MS: "3000" } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("hb"), [bob]);
  const a = h.client(api, ann, { url: gw.wsUrl, heartbeat: "app" });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  assert.equal(a.client.hello?.heartbeat, "app");
  assert.equal(a.client.hello?.heartbeat_ms, 1000);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const aLog = new RoomLog(aRoom);

  // Quiet for several idle timeouts: the SDK's pongs keep the socket alive (no 4002).
  await sleep(5000);
  assert.equal(
    a.ws.sockets.length,
    1,
    `no reconnect while quiet: ${JSON.stringify(a.ws.sockets.map((s) => [s.closeCode, s.closeReason]))}`,
  );
  assert.equal(a.client.state, "online");
  assert.equal(b.ws.sockets.length, 1, "the ws-heartbeat client is not idle-closed either (pongs are automatic)");

  await bRoom.send("before");
  await aLog.waitCount(1);

  // Freeze the gateway: the SDK must notice on its own (the socket does not close).
  gw.pause();
  const frozenAt = Date.now();
  h.onCleanup(() => gw.resume());
  await eventually(
    "ann's client detects the dead connection",
    () => a.client.state !== "online" || a.ws.sockets.length > 1,
    {
      state: () => a.client.state,
    },
  );
  // The socket's own close event may come a moment after the SDK's decision.
  await eventually(
    "the frozen socket is given up",
    () => a.ws.sockets[0].closedAt !== undefined || a.ws.sockets.length > 1,
  );
  t.diagnostic(`frozen gateway detected after ${Date.now() - frozenAt} ms (heartbeat_ms 1000)`);
  // The Node client in "auto" mode (WebSocket pings + liveness timer) notices too.
  await eventually(
    "bob's ws-heartbeat client detects the dead connection",
    () => b.client.state !== "online" || b.ws.sockets.length > 1,
    {
      state: () => b.client.state,
    },
  );
  const pending = aRoom.send("sent while frozen");

  gw.resume();
  await waitState(a.client, "online");
  await waitState(b.client, "online");
  await pending;
  await bRoom.send("after");
  await aLog.waitCount(3);
  assertExactSeqs(aLog.seqs, 1, 3, "ann");
  assert.deepEqual(aLog.bodies, ["before", "sent while frozen", "after"]);
});
