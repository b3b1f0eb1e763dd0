/**
 * Slow consumer (close 4009): Bob's socket stops being read (its TCP
 * socket is paused under the SDK) while Ann sends ~3 KB messages; the
 * gateway cuts Bob off once his bounded queue (WS_OUTBOUND_QUEUE=8)
 * overflows. When reading resumes, the SDK sees the close (4009, or 1006
 * if the server gave up writing the close frame), reconnects, resumes
 * with since_seq and Bob has every message exactly once, in order.
 * Set-up as in tests/ws/faults.rs.
 */
import assert from "node:assert/strict";

import type { ServerAck } from "../../src/index.ts";
import { Api, RoomLog, assertCleanWire, assertExactSeqs, e2e, eventually, uniq, waitState } from "../harness.ts";

e2e("slow consumer is cut off with 4009 and resumes without loss", async (h, t) => {
  const gw = await h.gateway({
    metrics: true,
    env: {
      WS_OUTBOUND_QUEUE: "8",
      WS_SEND_PER_SEC: "100000",
      WS_SEND_BURST: "100000",
      WS_MAX_BODY_BYTES: "3500",
      WS_MAX_FRAME_BYTES: "8192",
    },
  });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("firehose"), [bob]);
  const a = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const bLog = new RoomLog(bRoom);

  // From here on Bob's socket is not read.
  b.ws.pauseReading();
  // What Bob got over the cut-off socket: counted when it closes, before any resume.
  let beforeClose = -1;
  b.ws.sockets[0].ws.on("close", () => {
    beforeClose = bLog.messages.length;
  });
  const body = (i: number): string => `${String(i).padStart(5, "0")}-${"z".repeat(3000)}`;
  const WINDOW = 8; // no larger than the queue: one commit batch cannot overflow it by itself
  const MAX = 20_000;
  let sent = 0;
  let cut = false;
  for (;;) {
    const acks: Array<Promise<ServerAck>> = [];
    for (let i = sent + 1; i <= sent + WINDOW; i++) acks.push(aRoom.send(body(i)));
    await Promise.all(acks);
    sent += WINDOW;
    if (cut) break; // one more window after the cut-off
    cut = (await gw.metric("chatgw_ws_slow_consumers_total")) > 0;
    assert.ok(sent < MAX, `Bob was never cut off after ${sent} messages`);
  }
  assert.equal(b.ws.sockets.length, 1, "Bob's client has not noticed anything yet");

  // Bob reads again: the SDK drains what was buffered, sees the close, reconnects and resumes.
  const raw = (b.ws.sockets[0].ws as unknown as { _socket: { resume(): void } })._socket;
  raw.resume();
  await eventually("bob's first socket closes", () => b.ws.sockets[0].closedAt !== undefined, {
    state: () => bLog.messages.length,
  });
  const code = b.ws.sockets[0].closeCode;
  assert.ok(code === 4009 || code === 1006, `slow consumer close (4009, or 1006 without a close frame): ${code}`);
  await eventually("bob reconnects", () => b.ws.sockets.length >= 2);
  await waitState(b.client, "online");
  await bLog.waitCount(sent, `all ${sent} messages at bob`);
  t.diagnostic(
    `cut off after ${sent} sends; close ${code}; ${beforeClose} messages read on the cut-off socket, the rest replayed`,
  );
  assert.ok(
    beforeClose >= 0 && beforeClose < sent,
    `the cut-off socket missed messages that the resume had to replay (${beforeClose} of ${sent})`,
  );
  assertExactSeqs(bLog.seqs, 1, sent, "bob");
  for (const m of bLog.messages) assert.equal(m.body, body(m.seq), `body of seq ${m.seq}`);
  assert.equal(bRoom.lastSeq, sent);
  // What reached Bob's sockets: the cut-off one and the resumed one together hold no duplicate
  // and no gap (the resume asked from what he held; the server replayed only above it).
  assertCleanWire(b, "bob");
  // Ann reads her own 3 KB echoes through the same tiny queue: on a loaded machine she may be
  // cut off too, which is fine (her sends were all acked above); only Bob's case is asserted.
});
