/**
 * Token expiry and renewal (protocol §10): with short-lived access tokens
 * (ACCESS_TOKEN_TTL_SECS), the SDK calls its token provider before the
 * credential runs out and renews over the socket with `auth`: the socket
 * outlives several token lifetimes without a 4001. A provider that returns
 * an expired token once (at the handshake, or at a renewal) costs at most
 * a reconnect: the SDK asks again and carries on without loss. A logout
 * (session revoked, 4001) whose provider reports `unauthorized` stops the
 * client for good.
 */
import assert from "node:assert/strict";

import { ChatError } from "../../src/index.ts";
import {
  Api,
  RoomLog,
  assertCleanWire,
  assertExactSeqs,
  e2e,
  eventually,
  expiredCopy,
  refreshingTokens,
  uniq,
  waitState,
  type ApiError,
} from "../harness.ts";

const TTL_SECS = 5;

e2e("the SDK renews its token over the socket before expiry (no 4001, same socket)", async (h, t) => {
  const gw = await h.gateway({ env: { ACCESS_TOKEN_TTL_SECS: String(TTL_SECS) } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("renew"), [bob]);
  const a = h.client(api, ann, { url: gw.wsUrl });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  const firstExpiry = a.client.hello?.token_expires_at ?? 0;
  assert.ok(a.client.hello && a.client.hello.token_expires_in_ms <= TTL_SECS * 1000, "short-lived credential");
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const bLog = new RoomLog(bRoom);
  const callsAtConnect = a.tokenCalls();

  // Keep talking past the first expiry and until the SDK renewed twice (a renewal scheduled
  // from auth_ok, not only from hello); bounded by five lifetimes.
  let n = 0;
  const giveUp = firstExpiry + 4 * TTL_SECS * 1000;
  while ((Date.now() < firstExpiry + 1000 || a.tokenCalls() < callsAtConnect + 2) && Date.now() < giveUp) {
    n++;
    await aRoom.send(`m${n}`);
    await eventually(`bob gets m${n}`, () => bLog.messages.length >= n);
    await new Promise((r) => setTimeout(r, 500));
  }
  t.diagnostic(`${a.tokenCalls()} token provider calls (${callsAtConnect} at connect) over ${n} sends`);
  assert.ok(
    a.tokenCalls() >= callsAtConnect + 2,
    `the provider was asked again for renewals (${a.tokenCalls()} calls)`,
  );
  assert.equal(
    a.ws.sockets.length,
    1,
    `one socket all along: ${JSON.stringify(a.ws.sockets.map((s) => [s.closeCode, s.closeReason]))}`,
  );
  assert.ok(!a.states.some((s) => s.info?.code === 4001), "never closed with 4001");
  assert.equal(a.client.state, "online");
  assert.ok(!a.errors.some((e) => e.code === "token_expired"), `no token_expired: ${a.errors.map((e) => e.code)}`);
  assertExactSeqs(bLog.seqs, 1, n, "bob");
});

e2e("a token provider that returns an expired token once: handshake retried with a fresh token", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const roomId = await api.createRoom(ann, uniq("expired"), []);
  let calls = 0;
  const a = h.client(api, ann, {
    url: gw.wsUrl,
    token: async () => {
      calls++;
      if (calls === 1) return expiredCopy(ann.access);
      return (await api.refresh(ann)).access_token;
    },
  });
  await a.client.connect();
  assert.equal(a.client.state, "online");
  assert.ok(calls >= 2, `asked again after the refusal (${calls} calls)`);
  const room = await a.client.join(roomId);
  const ack = await room.send("hello");
  assert.equal(ack.seq, 1);
});

e2e("a token provider that returns an expired token at renewal: the SDK recovers without loss", async (h, t) => {
  const gw = await h.gateway({ env: { ACCESS_TOKEN_TTL_SECS: String(TTL_SECS) } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("expired2"), [bob]);
  let calls = 0;
  const a = h.client(api, ann, {
    url: gw.wsUrl,
    token: async () => {
      calls++;
      const fresh = (await api.refresh(ann)).access_token;
      // The first renewal gets an expired token (the handshake got a good one).
      return calls === 2 ? expiredCopy(fresh) : fresh;
    },
  });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const aLog = new RoomLog(aRoom);
  const firstExpiry = a.client.hello?.token_expires_at ?? 0;

  // Bob writes across the first expiry (until the SDK asked again after the bad token); Ann must end up with all of it.
  let n = 0;
  const giveUp = firstExpiry + 4 * TTL_SECS * 1000;
  while ((Date.now() < firstExpiry + 1000 || calls < 3) && Date.now() < giveUp) {
    n++;
    await bRoom.send(`m${n}`);
    await new Promise((r) => setTimeout(r, 400));
  }
  t.diagnostic(
    `${calls} provider calls; sockets closed with ${JSON.stringify(a.ws.sockets.map((s) => s.closeCode))}; errors ${JSON.stringify(a.errors.map((e) => e.code))}`,
  );
  assert.ok(calls >= 3, `the SDK asked again after the bad token (${calls} calls)`);
  await waitState(a.client, "online");
  const ack = await aRoom.send("still here");
  assert.equal(ack.seq, n + 1);
  await aLog.waitCount(n + 1);
  assertExactSeqs(aLog.seqs, 1, n + 1, "ann");
  assert.notEqual(a.client.state, "closed");
});

e2e("logout revokes the session: 4001, the provider says unauthorized, the client stops for good", async (h) => {
  const gw = await h.gateway();
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const tokens = refreshingTokens(api, ann);
  const a = h.client(api, ann, {
    url: gw.wsUrl,
    // How an app tells the SDK "logged out for good": a ChatError with code unauthorized.
    token: async () => {
      try {
        return await tokens.provider();
      } catch (e) {
        if ((e as Partial<ApiError>).status === 401) throw new ChatError("unauthorized", "session over");
        throw e;
      }
    },
  });
  await a.client.connect();
  await api.call("POST", "/api/v1/auth/logout", { token: ann.access });
  await waitState(a.client, "closed");
  assert.equal(a.ws.sockets[0].closeCode, 4001);
  assert.ok(
    a.errors.some((e) => e.code === "unauthorized"),
    `the app is told: ${JSON.stringify(a.errors.map((e) => e.code))}`,
  );
  assert.equal(a.ws.sockets.length, 1, "no reconnect with a dead session");
});

e2e("one refresh at a time: a reconnect during a slow renewal shares the provider call", async (h, t) => {
  const gw = await h.gateway({ env: { ACCESS_TOKEN_TTL_SECS: String(TTL_SECS) } });
  const api = new Api(gw.base);
  const ann = await api.register("ann");
  const bob = await api.register("bob");
  const roomId = await api.createRoom(ann, uniq("single"), [bob]);
  // A provider that refreshes with the refresh token it holds, slowly, and
  // counts overlapping calls. Deliberately not serialized: two concurrent
  // calls would present one refresh token twice (a reuse the server punishes).
  let inFlight = 0;
  let maxInFlight = 0;
  let calls = 0;
  let refused = 0;
  const a = h.client(api, ann, {
    url: gw.wsUrl,
    token: async () => {
      calls++;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        if (calls > 1) await new Promise((r) => setTimeout(r, 2500));
        return (await api.refresh(ann)).access_token;
      } catch (e) {
        refused++;
        throw e;
      } finally {
        inFlight--;
      }
    },
  });
  const b = h.client(api, bob, { url: gw.wsUrl });
  await Promise.all([a.client.connect(), b.client.connect()]);
  const aRoom = await a.client.join(roomId);
  const bRoom = await b.client.join(roomId);
  const aLog = new RoomLog(aRoom);
  // The renewal starts (before expiry) and hangs for 2.5 s; meanwhile the socket is closed
  // by an operator, so the reconnect needs a token while the renewal's refresh is pending.
  await eventually("the renewal asks the provider", () => inFlight > 0 && calls >= 2, { timeoutMs: TTL_SECS * 1000 * 2 });
  const callsAtDrop = calls;
  await api.disconnect(ann, 4000, "operator");
  await eventually("ann reconnects", () => a.ws.sockets.length >= 2 && a.client.state === "online", {
    state: () => [a.client.state, calls, inFlight],
  });
  t.diagnostic(`${calls} provider calls (${callsAtDrop} when the socket was closed), at most ${maxInFlight} at once`);
  assert.equal(maxInFlight, 1, "never two provider calls at once");
  assert.equal(calls, callsAtDrop, "the reconnect used the refresh in flight, no new call");
  assert.equal(refused, 0, "no refresh was refused");
  await bRoom.send("after");
  await aLog.waitCount(1);
  assertExactSeqs(aLog.seqs, 1, 1, "ann");
  assertCleanWire(a, "ann");
});
