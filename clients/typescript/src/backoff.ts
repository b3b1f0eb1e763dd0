/**
 * Reconnect delays. Full jitter (protocol §7): delay = random(0, min(maxMs,
 * baseMs * 2^attempt)). Full jitter rather than "exponential + small jitter"
 * because after a gateway restart every client reconnects at once; spreading
 * them over the whole window avoids a reconnect storm.
 */
export interface BackoffOptions {
  /** First window, ms (default 500). */
  baseMs?: number;
  /** Largest window, ms (default 30000). */
  maxMs?: number;
}

export function fullJitter(attempt: number, opts: BackoffOptions = {}, random: () => number = Math.random): number {
  const base = opts.baseMs ?? 500;
  const max = opts.maxMs ?? 30_000;
  // 2^attempt overflows to Infinity for large attempts; min() keeps it finite.
  const window = Math.min(max, base * Math.pow(2, Math.max(0, attempt)));
  return Math.floor(random() * window);
}

/** Counts consecutive failures; reset once a connection proved stable. */
export class Backoff {
  attempt = 0;
  constructor(
    private readonly opts: BackoffOptions = {},
    private readonly random: () => number = Math.random,
  ) {}

  /** The delay before the next attempt; counts this failure. */
  next(): number {
    const d = fullJitter(this.attempt, this.opts, this.random);
    this.attempt++;
    return d;
  }

  reset(): void {
    this.attempt = 0;
  }
}

/**
 * Parses the drain close reason `drain; reconnect_after_ms=<N>` (§11).
 * Returns undefined when the reason carries no delay.
 */
export function parseDrainDelay(reason: string | undefined): number | undefined {
  if (!reason) return undefined;
  const m = /reconnect_after_ms=(\d+)/.exec(reason);
  if (!m) return undefined;
  const n = Number(m[1]);
  return Number.isFinite(n) ? n : undefined;
}
