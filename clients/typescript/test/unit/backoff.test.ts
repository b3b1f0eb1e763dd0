import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, fullJitter, parseDrainDelay } from "../../src/backoff.ts";
import { decideOnClose, decideOnHandshake, renewalDelay } from "../../src/policy.ts";

test("full jitter stays within [0, min(max, base * 2^attempt))", () => {
  for (let attempt = 0; attempt < 20; attempt++) {
    const window = Math.min(30_000, 500 * 2 ** attempt);
    assert.equal(fullJitter(attempt, {}, () => 0), 0);
    const hi = fullJitter(attempt, {}, () => 0.999999);
    assert.ok(hi < window && hi >= window - 1, `attempt ${attempt}: ${hi} vs ${window}`);
  }
  assert.equal(fullJitter(1000, { baseMs: 100, maxMs: 2000 }, () => 0.5), 1000, "huge attempts stay capped");
});

test("Backoff grows per failure and resets", () => {
  const b = new Backoff({ baseMs: 100, maxMs: 10_000 }, () => 0.999);
  const seen = [b.next(), b.next(), b.next(), b.next()];
  assert.deepEqual(seen, [99, 199, 399, 799]);
  b.reset();
  assert.equal(b.next(), 99);
});

test("drain reason parsing", () => {
  assert.equal(parseDrainDelay("drain; reconnect_after_ms=3817"), 3817);
  assert.equal(parseDrainDelay("drain"), undefined);
  assert.equal(parseDrainDelay(""), undefined);
  assert.equal(parseDrainDelay(undefined), undefined);
});

test("close codes: every §7 action", () => {
  const b = () => new Backoff({ baseMs: 500, maxMs: 30_000 }, () => 0.5);
  const r = () => 0.5;
  // 1001 waits the announced delay, never less.
  const drain = decideOnClose(1001, "drain; reconnect_after_ms=3817", b(), r);
  assert.ok(drain.reconnect && drain.delayMs >= 3817 && drain.delayMs < 3817 + 250);
  // 1001 without a delay: random 0-10 s.
  const drain2 = decideOnClose(1001, "", b(), r);
  assert.ok(drain2.reconnect && drain2.delayMs <= 10_250);
  // 4003: no reconnect, forbidden.
  const ban = decideOnClose(4003, "", b(), r);
  assert.ok(!ban.reconnect && ban.error.code === "forbidden" && ban.error.closeCode === 4003);
  // 4001: reconnect soon with a fresh credential.
  const auth = decideOnClose(4001, "", b(), r);
  assert.ok(auth.reconnect && auth.authFailure === true && auth.delayMs < 250);
  // 4009: prompt.
  const slow = decideOnClose(4009, "", b(), r);
  assert.ok(slow.reconnect && slow.delayMs < 500);
  // 4008: long backoff.
  const abuse = decideOnClose(4008, "", b(), r);
  assert.ok(abuse.reconnect && abuse.delayMs >= 5000);
  // Everything else reconnects with backoff.
  for (const code of [1000, 1006, 1007, 1009, 1011, 4000, 4002, 4004, 4999]) {
    const d = decideOnClose(code, "", b(), r);
    assert.ok(d.reconnect, `code ${code}`);
  }
});

test("handshake refusals (§2.4)", () => {
  const b = () => new Backoff({}, () => 0.5);
  assert.equal(decideOnHandshake(403, b()).reconnect, false);
  assert.equal(decideOnHandshake(400, b()).reconnect, false);
  const d401 = decideOnHandshake(401, b());
  assert.ok(d401.reconnect && d401.authFailure);
  const d429 = decideOnHandshake(429, b());
  assert.ok(d429.reconnect && d429.delayMs >= 1000);
  assert.ok(decideOnHandshake(503, b()).reconnect);
  assert.ok(decideOnHandshake(undefined, b()).reconnect);
});

test("1006 (no close frame) has one rule: backoff with jitter, counted as a failure, then resume (§7)", () => {
  // Same random, same backoff state: 1006 decides exactly like 1011.
  const rand = () => 0.75;
  const b1006 = new Backoff({ baseMs: 500, maxMs: 30_000 }, rand);
  const b1011 = new Backoff({ baseMs: 500, maxMs: 30_000 }, rand);
  const delays: number[] = [];
  for (let attempt = 0; attempt < 4; attempt++) {
    const d = decideOnClose(1006, "", b1006, rand);
    const ref = decideOnClose(1011, "", b1011, rand);
    assert.ok(d.reconnect && ref.reconnect);
    assert.equal(d.authFailure, undefined);
    assert.equal(d.delayMs, ref.delayMs, `attempt ${attempt}: 1006 waits like 1011`);
    // Full jitter within the attempt's window: random(0, min(30 s, 0.5 s * 2^attempt)).
    assert.equal(d.delayMs, Math.floor(0.75 * Math.min(30_000, 500 * 2 ** attempt)));
    delays.push(d.delayMs);
  }
  assert.equal(b1006.attempt, 4, "each 1006 counts as a failed attempt (the window grows)");
  assert.deepEqual(delays, [375, 750, 1500, 3000]);
});

test("token renewal at the lesser of 60 s and half the lifetime before expiry (§10)", () => {
  assert.equal(renewalDelay(900_000), 840_000, "15-minute token: a minute before expiry");
  assert.equal(renewalDelay(120_000), 60_000, "two minutes: both rules agree");
  assert.equal(renewalDelay(119_000), 59_500, "under two minutes: half-way");
  assert.equal(renewalDelay(30_000), 15_000, "a 30-second token: after 15 s");
  assert.equal(renewalDelay(1_000), 500);
  assert.equal(renewalDelay(0), 0, "already expired: at once");
  assert.equal(renewalDelay(-5), 0, "never a negative wait");
});
