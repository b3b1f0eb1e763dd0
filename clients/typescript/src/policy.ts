/**
 * What to do when a connection ends (protocol §7) or its handshake is
 * refused (§2.4). Kept apart from the client so every code's rule is in one
 * table and unit-testable without sockets.
 */
import { Backoff, parseDrainDelay } from "./backoff.js";
import { ChatError } from "./errors.js";

export type Decision =
  | { reconnect: true; delayMs: number; why: string; authFailure?: boolean }
  | { reconnect: false; error: ChatError };

/** Close codes (§7). `hadHello`: the socket got its hello (else a refused/failed handshake). */
export function decideOnClose(
  code: number,
  reason: string,
  backoff: Backoff,
  random: () => number = Math.random,
): Decision {
  switch (code) {
    case 1001: {
      // Drain: wait the announced randomised delay (+ a little jitter of
      // ours, never less than announced), then reconnect (§11).
      const n = parseDrainDelay(reason);
      const base = n ?? Math.floor(random() * 10_000);
      return { reconnect: true, delayMs: base + Math.floor(random() * 250), why: "drain" };
    }
    case 4001:
      // Credential expired or session revoked: the credential provider is
      // called again for the next attempt (that is the "refresh first").
      return { reconnect: true, delayMs: Math.floor(random() * 250), why: "token expired", authFailure: true };
    case 4003:
      return {
        reconnect: false,
        error: new ChatError("forbidden", "the server closed the connection: user banned (4003)", { closeCode: code }),
      };
    case 4008:
      // Kept sending while rate limited: a long backoff.
      return { reconnect: true, delayMs: 5_000 + backoff.next(), why: "rate-limit abuse" };
    case 4009:
      // Slow consumer: nothing is lost; reconnect promptly and resume.
      return { reconnect: true, delayMs: Math.floor(random() * 500), why: "slow consumer" };
    default:
      // 1000 (not asked for), 1006, 1007, 1009, 1011, 4000, 4002 and unknown
      // 4xxx codes: reconnect with backoff and jitter, then resume.
      return { reconnect: true, delayMs: backoff.next(), why: `closed ${code}` };
  }
}

/** A handshake refused with an HTTP status (known only with Node `ws`; browsers see 1006). */
export function decideOnHandshake(status: number | undefined, backoff: Backoff, random: () => number = Math.random): Decision {
  switch (status) {
    case 401:
      // Expired/invalid token or used ticket: get a fresh one and retry soon.
      return { reconnect: true, delayMs: Math.floor(random() * 250) + backoff.next(), why: "401", authFailure: true };
    case 403:
      return {
        reconnect: false,
        error: new ChatError("forbidden", "handshake refused (403): origin not allowed, user banned or erased"),
      };
    case 400:
      return { reconnect: false, error: new ChatError("bad_request", "handshake refused (400): a client bug") };
    case 429:
      return { reconnect: true, delayMs: 1_000 + backoff.next(), why: "429" };
    default:
      // 503 (draining, at capacity), network errors, unknown statuses.
      return { reconnect: true, delayMs: backoff.next(), why: status ? String(status) : "network" };
  }
}

/**
 * How long after a credential's expiry was announced (`token_expires_in_ms`,
 * `expires_in_ms`) the client renews it: when the remaining life falls to
 * the lesser of 60 s and half the lifetime (§10). A minute before expiry for
 * the usual 15-minute token; half-way for one under two minutes, so a short
 * token still leaves as much time for the refresh as it has already lived.
 */
export function renewalDelay(expiresInMs: number): number {
  if (!Number.isFinite(expiresInMs) || expiresInMs <= 0) return 0;
  return expiresInMs - Math.min(60_000, Math.floor(expiresInMs / 2));
}
