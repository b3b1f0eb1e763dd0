/**
 * Fallback for an older (1.0) server: a small WebSocket proxy in front of
 * the real gateway strips the 1.1 fields from `hello` (no
 * `protocol_version`, no `features`), so the SDK must resume with one
 * `join {since_seq}` per room instead of `sync`. The proxy records the
 * client's frames to prove it.
 */
import assert from "node:assert/strict";
import type { IncomingMessage } from "node:http";

import WebSocket, { WebSocketServer } from "ws";

import { Api, RoomLog, assertExactSeqs, e2e, eventually, freePort, uniq } from "../harness.ts";

interface Frame {
  type: string;
  room?: string;
  since_seq?: number;
}

/** A proxy that presents the gateway as a 1.0 server. */
async function oneDotZeroProxy(upstreamPort: number): Promise<{ url: string; frames: Frame[][]; close(): void }> {
  const port = await freePort();
  const frames: Frame[][] = [];
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port,
    handleProtocols: (p: Set<string>) => (p.has("chatgw.v1") ? "chatgw.v1" : false),
  });
  wss.on("connection", (client: WebSocket, req: IncomingMessage) => {
    const seen: Frame[] = [];
    frames.push(seen);
    const headers: Record<string, string> = {};
    if (req.headers.authorization) headers.authorization = req.headers.authorization;
    const upstream = new WebSocket(`ws://127.0.0.1:${upstreamPort}${req.url ?? "/ws"}`, ["chatgw.v1"], { headers });
    const queued: string[] = [];
    upstream.on("open", () => {
      for (const q of queued.splice(0)) upstream.send(q);
    });
    upstream.on("message", (data: WebSocket.RawData) => {
      const f = JSON.parse(String(data)) as Record<string, unknown>;
      if (f.type === "hello") {
        for (const k of ["protocol_version", "features", "heartbeat", "server_time", "token_expires_in_ms"])
          delete f[k];
      }
      client.send(JSON.stringify(f));
    });
    client.on("message", (data: WebSocket.RawData) => {
      const text = String(data);
      seen.push(JSON.parse(text) as Frame);
      if (upstream.readyState === WebSocket.OPEN) upstream.send(text);
      else queued.push(text);
    });
    upstream.on("close", (code: number, reason: Buffer) => {
      if (code === 1005 || code === 1006) client.terminate();
      else client.close(code, reason.toString());
    });
    upstream.on("error", () => client.terminate());
    client.on("close", () => upstream.close());
    client.on("error", () => upstream.terminate());
  });
  await new Promise<void>((resolve) => wss.once("listening", () => resolve()));
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    frames,
    close: () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
    },
  };
}

e2e("against a 1.0 server the SDK resumes with one join per room (no sync)", async (h, t) => {
  const gw = await h.gateway();
  const proxy = await oneDotZeroProxy(gw.port);
  h.onCleanup(() => proxy.close());
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const r1 = await api.createRoom(ann, uniq("old1"), [bob]);
  const r2 = await api.createRoom(ann, uniq("old2"), [bob]);
  const a = h.client(api, ann, { url: proxy.url });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  assert.equal(a.client.hello?.features, undefined, "the SDK sees a 1.0 hello");
  const logs = [new RoomLog(await a.client.join(r1)), new RoomLog(await a.client.join(r2))];
  const bRooms = [await b.client.join(r1), await b.client.join(r2)];
  for (const r of bRooms) await r.send("one");
  for (const l of logs) await l.waitCount(1);

  // Ann is disconnected for 1.5 s (through the proxy); Bob writes to both rooms meanwhile.
  await api.disconnect(ann, 1001, "drain; reconnect_after_ms=1500");
  await eventually("ann's socket closed", () => a.ws.sockets[0].closedAt !== undefined);
  for (const r of bRooms) await r.send("two");
  await eventually("ann back", () => a.ws.sockets.length >= 2 && a.client.state === "online");
  for (const l of logs) {
    await l.waitCount(2);
    assertExactSeqs(l.seqs, 1, 2, `room ${l.room.id}`);
    assert.deepEqual(l.bodies, ["one", "two"]);
  }
  const all = proxy.frames.flat();
  t.diagnostic(`client frames per connection: ${JSON.stringify(proxy.frames.map((fs) => fs.map((f) => f.type)))}`);
  assert.ok(
    !all.some((f) => f.type === "sync"),
    `no sync frame to a 1.0 server: ${JSON.stringify(all.map((f) => f.type))}`,
  );
  const resumed = proxy.frames[1].filter((f) => f.type === "join");
  assert.deepEqual(
    resumed.map((f) => [f.room, f.since_seq]).sort(),
    [
      [r1, 1],
      [r2, 1],
    ].sort(),
    "one join per room with since_seq after the reconnect",
  );
  const ack = await a.client.room(r1)?.send("reply");
  assert.equal(ack?.seq, 3);
});
