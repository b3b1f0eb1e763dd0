/**
 * Ticket-only client (how browsers connect, protocol §2.2): every
 * connection attempt gets a fresh single-use ticket in the query string.
 * Without a token provider the SDK cannot renew over the socket, so when
 * the credential runs out (4001) it reconnects with a new ticket and
 * resumes without loss.
 */
import assert from "node:assert/strict";

import { Api, RoomLog, assertExactSeqs, e2e, eventually, refreshingTokens, uniq, waitState } from "../harness.ts";

const TTL_SECS = 4;

e2e(
  "ticket-only client: fresh ticket per attempt; 4001 at expiry -> reconnect with a new ticket, nothing lost",
  async (h, t) => {
    const gw = await h.gateway({ env: { ACCESS_TOKEN_TTL_SECS: String(TTL_SECS) } });
    const api = new Api(gw.base);
    const ann = await api.register("ann");
    const bob = await api.register("bob");
    const roomId = await api.createRoom(ann, uniq("tickets"), [bob]);
    const annTokens = refreshingTokens(api, ann);
    let tickets = 0;
    const a = h.client(api, ann, {
      url: gw.wsUrl,
      noToken: true,
      ticket: async () => {
        tickets++;
        await annTokens.provider(); // a fresh access token for the ticket (and so a fresh credential lifetime)
        return api.ticket(ann);
      },
    });
    const b = h.client(api, bob, { url: gw.wsUrl });
    await Promise.all([a.client.connect(), b.client.connect()]);
    assert.match(a.ws.sockets[0].url, /[?&]ticket=wst_/, "the ticket is in the query string");
    const aRoom = await a.client.join(roomId);
    const bRoom = await b.client.join(roomId);
    const aLog = new RoomLog(aRoom);
    const firstExpiry = a.client.hello?.token_expires_at ?? 0;

    // Bob writes across the expiry of Ann's credential.
    let n = 0;
    while (Date.now() < firstExpiry + 1500 || a.ws.sockets.length < 2) {
      n++;
      await bRoom.send(`m${n}`);
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(n < 200, "ann's socket never expired");
    }
    await waitState(a.client, "online");
    t.diagnostic(`${tickets} tickets; sockets closed with ${JSON.stringify(a.ws.sockets.map((s) => s.closeCode))}`);
    assert.equal(a.ws.sockets[0].closeCode, 4001, "the credential ran out: 4001");
    assert.ok(tickets >= 2, `a new ticket for the reconnect (${tickets})`);
    const urls = a.ws.sockets.map((s) => s.url);
    assert.equal(new Set(urls).size, urls.length, "never the same (single-use) ticket twice");
    await aLog.waitCount(n);
    await eventually("ann up to date", () => aRoom.lastSeq === n);
    assertExactSeqs(aLog.seqs, 1, n, "ann");
    const ack = await aRoom.send("reply");
    assert.equal(ack.seq, n + 1);
  },
);
