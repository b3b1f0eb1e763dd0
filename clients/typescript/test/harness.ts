/**
 * End-to-end harness: runs the real `chatgw` binary (CHATGW_BIN) as child
 * processes with databases and Redis servers of their own, and gives tests
 * REST helpers, fault injection (SIGKILL, SIGTERM drain, SIGSTOP/SIGCONT,
 * restarts on the same port and data) and recording/assertion helpers for
 * SDK clients.
 *
 * Why child processes and not an in-process server: the SDK's guarantees
 * (resume, outbox, exactly-once) only mean something against the shipped
 * binary under real faults, so every test drives that binary.
 *
 * Everything a test starts is registered with its {@link Harness} and
 * released when the test ends; a process-exit hook also kills stray children
 * and drops databases if the test runner kills the file mid-test.
 */
import { spawn, spawnSync, execFile, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, existsSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import WebSocket from "ws";

import { ChatClient, MemoryStore } from "../src/index.ts";
import type { ChatError, ClientState, Room, ServerMessage, ServerEdit, ServerDelete, Store } from "../src/index.ts";

const execFileP = promisify(execFile);

/**
 * The binary under test: CHATGW_BIN (scripts/test.sh sets it), else this
 * repository's cargo build (debug, then release), so `npm run test:e2e`
 * works after a plain `cargo build`.
 */
const BUILDS = ["debug", "release"].map((p) => fileURLToPath(new URL(`../../../target/${p}/chatgw`, import.meta.url)));
export const CHATGW_BIN = process.env.CHATGW_BIN ?? BUILDS.find((p) => existsSync(p)) ?? BUILDS[0];
/** Fixed so tokens survive restarts (development mode would pick a random one per start). */
export const JWT_SECRET = "sdk-e2e-secret-0123456789-abcdefghijklmnopqrstuv";
export const ADMIN_TOKEN = "sdk-e2e-admin-token-0123456789-abcdefghijklmn";
export const PASSWORD = "correct horse battery";
/**
 * The PostgreSQL server tests make their databases on: TEST_DATABASE_URL
 * (scripts/test.sh exports the one it chose: the machine's, or a throwaway
 * cluster on a free port), else the local default. Any database of it
 * serves as the admin connection for CREATE/DROP DATABASE.
 */
const PG_ADMIN_URL = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** The URL of database `name` on the same server, with the same credentials. */
function pgDatabaseUrl(name: string): string {
  const u = new URL(PG_ADMIN_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

/** Generous: the machine is shared by several agents and may be slow. */
export const WAIT_MS = 60_000;

// ---------------------------------------------------------------------------
// Process-exit safety net: nothing a test started outlives the test file.

const liveChildren = new Set<ChildProcess>();
const liveDatabases = new Set<string>();
const liveDirs = new Set<string>();

function emergencyCleanup(): void {
  for (const c of liveChildren) {
    try {
      if (c.pid !== undefined) {
        process.kill(c.pid, "SIGCONT");
        process.kill(c.pid, "SIGKILL");
      }
    } catch {
      // already gone
    }
  }
  liveChildren.clear();
  for (const name of liveDatabases) {
    spawnSync("psql", [PG_ADMIN_URL, "-qc", `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`], { stdio: "ignore" });
  }
  liveDatabases.clear();
  for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
  liveDirs.clear();
}
process.on("exit", emergencyCleanup);
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    emergencyCleanup();
    process.exit(130);
  });
}

// ---------------------------------------------------------------------------
// Small utilities.

/** A TCP port nobody listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  liveDirs.add(d);
  return d;
}

/**
 * Polls `cond` until it returns a truthy value (returned), failing after
 * `timeoutMs` with `what` and the last observed state. Tests wait for
 * conditions, never for fixed times (the machine's speed varies a lot).
 */
export async function eventually<T>(
  what: string,
  cond: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  opts: { timeoutMs?: number; intervalMs?: number; state?: () => unknown } = {},
): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? WAIT_MS);
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      let state = "";
      try {
        state = opts.state ? ` state: ${safeJson(await opts.state())}` : "";
      } catch {
        // the state is a diagnosis, best effort
      }
      const err = lastErr ? ` last error: ${String(lastErr)}` : "";
      throw new Error(`timed out waiting for ${what}${state}${err}`);
    }
    await sleep(opts.intervalMs ?? 25);
  }
}

function safeJson(v: unknown): string {
  try {
    const s = JSON.stringify(v);
    return s.length > 2000 ? `${s.slice(0, 2000)}…` : s;
  } catch {
    return String(v);
  }
}

/** Unique short names (room names, emails) per test run. */
export function uniq(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

// ---------------------------------------------------------------------------
// Databases and Redis.

export interface Database {
  url: string;
  kind: "sqlite" | "postgres";
  drop(): Promise<void>;
}

/** A fresh SQLite file in a temp dir: the cheapest database, kept across restarts of one gateway. */
export function sqliteDb(): Database {
  const dir = tempDir("chatgw-sdk-db-");
  return {
    url: `sqlite://${dir}/chatgw.db`,
    kind: "sqlite",
    async drop() {
      rmSync(dir, { recursive: true, force: true });
      liveDirs.delete(dir);
    },
  };
}

async function psql(sql: string): Promise<void> {
  await execFileP("psql", [PG_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql]);
}

/** A fresh PostgreSQL database `sdk_<random>` on the server of TEST_DATABASE_URL, dropped afterwards. */
export async function postgresDb(): Promise<Database> {
  const name = `sdk_${randomBytes(6).toString("hex")}`;
  await psql(`CREATE DATABASE ${name}`);
  liveDatabases.add(name);
  return {
    url: pgDatabaseUrl(name),
    kind: "postgres",
    async drop() {
      await psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined);
      liveDatabases.delete(name);
    },
  };
}

/** A `redis-server` of the test's own on a free port (never the machine's shared one). */
export class RedisServer {
  private child?: ChildProcess;
  private readonly dir = tempDir("chatgw-sdk-redis-");
  private constructor(readonly port: number) {}

  static async start(): Promise<RedisServer> {
    const r = new RedisServer(await freePort());
    r.child = spawn(
      "redis-server",
      ["--port", String(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir],
      { stdio: "ignore" },
    );
    liveChildren.add(r.child);
    await eventually(`redis-server on ${r.port}`, () => tcpOpen(r.port), { timeoutMs: 20_000 });
    return r;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    const c = this.child;
    this.child = undefined;
    if (c) await killAndWait(c, "SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
    liveDirs.delete(this.dir);
  }
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

async function killAndWait(c: ChildProcess, sig: NodeJS.Signals): Promise<number | null> {
  liveChildren.delete(c);
  if (c.exitCode !== null || c.signalCode !== null) return c.exitCode;
  const exited = new Promise<number | null>((resolve) => c.once("exit", (code) => resolve(code)));
  try {
    if (c.pid !== undefined) {
      // A stopped process only acts on signals once continued.
      process.kill(c.pid, "SIGCONT");
      process.kill(c.pid, sig);
    }
  } catch {
    // already gone
  }
  return exited;
}

// ---------------------------------------------------------------------------
// The gateway.

/** The environment every test gateway starts with; tests add or override entries. */
export function baseEnv(db: Database, port: number): Record<string, string> {
  return {
    LISTEN_ADDR: `127.0.0.1:${port}`,
    DATABASE_URL: db.url,
    JWT_SECRET,
    ADMIN_TOKEN,
    LOGIN_ATTEMPTS_PER_MINUTE: "10000",
    WS_HANDSHAKES_PER_IP_PER_SEC: "100000",
    SHUTDOWN_TIMEOUT_SECS: "10",
    DRAIN_RECONNECT_MAX_MS: "1000",
    RUST_LOG: process.env.CHATGW_LOG ?? "info",
  };
}

let gatewayCounter = 0;

/**
 * One `chatgw` process. Its stdout and stderr go to a log file that
 * survives restarts (appended), so a failing test can print what the
 * gateway said across all its lives.
 */
export class Gateway {
  readonly name: string;
  readonly logFile: string;
  private child?: ChildProcess;
  private stopped = false;

  private constructor(
    readonly port: number,
    readonly env: Record<string, string>,
    name: string,
  ) {
    this.name = name;
    this.logFile = join(tempDir("chatgw-sdk-log-"), `${name}.log`);
  }

  /** Starts a gateway on `db` (a free port unless given) and waits for `/readyz`. */
  static async start(
    db: Database,
    opts: { env?: Record<string, string>; port?: number; name?: string } = {},
  ): Promise<Gateway> {
    if (!existsSync(CHATGW_BIN)) throw new Error(`gateway binary not found at ${CHATGW_BIN} (set CHATGW_BIN)`);
    const port = opts.port ?? (await freePort());
    const g = new Gateway(port, { ...baseEnv(db, port), ...opts.env }, opts.name ?? `gw${++gatewayCounter}`);
    await g.spawn();
    return g;
  }

  get base(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The WebSocket URL the SDK connects to. */
  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  private async spawn(): Promise<void> {
    const fd = openSync(this.logFile, "a");
    const child = spawn(CHATGW_BIN, [], {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...this.env },
      stdio: ["ignore", fd, fd],
    });
    closeSync(fd);
    liveChildren.add(child);
    this.child = child;
    this.stopped = false;
    let exited = false;
    child.once("exit", () => {
      exited = true;
    });
    await eventually(
      `gateway ${this.name} ready on ${this.port}`,
      async () => {
        if (exited) throw new Error(`gateway ${this.name} exited during start-up:\n${this.tail(30)}`);
        const r = await fetch(`${this.base}/readyz`).catch(() => undefined);
        return r?.status === 200;
      },
      { intervalMs: 50 },
    ).catch((e: unknown) => {
      throw new Error(`${String(e)}\n--- ${this.name} log tail ---\n${this.tail(40)}`);
    });
  }

  /** SIGKILL: no drain, no goodbye; sockets just break. */
  async kill(): Promise<void> {
    const c = this.child;
    this.child = undefined;
    if (c) await killAndWait(c, "SIGKILL");
  }

  /** SIGTERM (drain: 1001 with `reconnect_after_ms`) and wait for the exit; returns the exit code. */
  async terminate(): Promise<number | null> {
    const c = this.child;
    this.child = undefined;
    if (!c) return null;
    return killAndWait(c, "SIGTERM");
  }

  /** SIGSTOP: the process freezes, its sockets stay open but silent. */
  pause(): void {
    if (this.child?.pid !== undefined) {
      process.kill(this.child.pid, "SIGSTOP");
      this.stopped = true;
    }
  }

  /** SIGCONT after {@link pause}. */
  resume(): void {
    if (this.child?.pid !== undefined && this.stopped) {
      process.kill(this.child.pid, "SIGCONT");
      this.stopped = false;
    }
  }

  /** Starts the same configuration again, on the same port and database. */
  async start(): Promise<void> {
    if (this.child) throw new Error(`gateway ${this.name} is still running`);
    // The port may linger for a moment after the old process died.
    await eventually(`port ${this.port} free`, async () => !(await tcpOpen(this.port)), { timeoutMs: 20_000 });
    await this.spawn();
  }

  /** SIGKILL then start again on the same port and data. */
  async restart(): Promise<void> {
    await this.kill();
    await this.start();
  }

  /**
   * A Prometheus sample of this gateway (`name` with its labels, e.g.
   * `chatgw_ws_closes_total{code="4009"}`), 0 when absent; needs `metrics: true`.
   */
  async metric(name: string): Promise<number> {
    const addr = this.env.METRICS_ADDR;
    if (!addr) throw new Error(`gateway ${this.name} has no METRICS_ADDR`);
    const text = await (await fetch(`http://${addr}/metrics`)).text();
    for (const line of text.split("\n")) {
      if (line.startsWith(`${name} `)) return Number(line.slice(name.length + 1));
    }
    return 0;
  }

  /** The last `n` lines of the gateway's log (all its lives). */
  tail(n = 40): string {
    try {
      const lines = readFileSync(this.logFile, "utf8").split("\n");
      return lines.slice(-n - 1).join("\n");
    } catch {
      return "(no log)";
    }
  }

  async dispose(): Promise<void> {
    await this.kill();
  }
}

// ---------------------------------------------------------------------------
// REST.

export interface User {
  id: string;
  name: string;
  email: string;
  access: string;
  refresh: string;
}

export interface ApiError extends Error {
  status: number;
  body: unknown;
}

/** Thin REST client over `fetch` for the test's side of the world (users, rooms, admin). */
export class Api {
  constructor(private baseUrl: string) {}

  /** Point at another instance (all instances share the database). */
  use(base: string): void {
    this.baseUrl = base;
  }

  async call<T = unknown>(
    method: string,
    path: string,
    opts: { token?: string; body?: unknown; expect?: number[] } = {},
  ): Promise<T> {
    const headers: Record<string, string> = {};
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    if (opts.body !== undefined) headers["content-type"] = "application/json";
    const r = await fetch(`${this.baseUrl}${path}`, {
      method,
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    const text = await r.text();
    const body: unknown = text ? JSON.parse(text) : undefined;
    if (!(opts.expect ?? [200, 201, 202, 204]).includes(r.status)) {
      const e = new Error(`${method} ${path} -> ${r.status}: ${text}`) as ApiError;
      e.status = r.status;
      e.body = body;
      throw e;
    }
    return body as T;
  }

  async register(name: string): Promise<User> {
    const email = `${uniq(name)}@example.com`;
    const r = await this.call<AuthResponse>("POST", "/api/v1/auth/register", {
      body: { email, password: PASSWORD, display_name: name },
    });
    return { id: r.user.id, name, email, access: r.access_token, refresh: r.refresh_token };
  }

  /** A new session's tokens (a fresh login). */
  async login(user: User): Promise<AuthResponse> {
    return this.call<AuthResponse>("POST", "/api/v1/auth/login", { body: { email: user.email, password: PASSWORD } });
  }

  /** Rotates `user.refresh` (single use) and `user.access`. Callers must not refresh one user concurrently. */
  async refresh(user: User): Promise<AuthResponse> {
    const r = await this.call<AuthResponse>("POST", "/api/v1/auth/refresh", { body: { refresh_token: user.refresh } });
    user.refresh = r.refresh_token;
    user.access = r.access_token;
    return r;
  }

  async createRoom(owner: User, name: string, members: User[] = []): Promise<string> {
    const r = await this.call<{ id: string }>("POST", "/api/v1/rooms", {
      token: owner.access,
      body: { name, members: members.map((m) => m.id) },
    });
    return r.id;
  }

  async addMember(owner: User, room: string, member: User): Promise<void> {
    await this.call("POST", `/api/v1/rooms/${room}/members`, { token: owner.access, body: { user_id: member.id } });
  }

  async removeMember(owner: User, room: string, member: User): Promise<void> {
    await this.call("DELETE", `/api/v1/rooms/${room}/members/${member.id}`, { token: owner.access });
  }

  async ban(user: User): Promise<void> {
    await this.call("POST", `/api/v1/admin/users/${user.id}/ban`, { token: ADMIN_TOKEN });
  }

  /** Closes every socket of the user with `code`/`reason` (e.g. a drain close with a known delay). */
  async disconnect(user: User, code: number, reason: string): Promise<void> {
    await this.call("POST", `/api/v1/admin/users/${user.id}/disconnect`, {
      token: ADMIN_TOKEN,
      body: { code, reason },
    });
  }

  async ticket(user: User): Promise<string> {
    const r = await this.call<{ ticket: string }>("POST", "/api/v1/auth/ws-ticket", { token: user.access });
    return r.ticket;
  }

  /** Every stored entry of a room (messages and change events), ascending seq. */
  async history(user: User, room: string): Promise<HistoryEntry[]> {
    const all: HistoryEntry[] = [];
    let after = 0;
    for (;;) {
      const page = await this.call<{ messages: HistoryEntry[]; has_more: boolean }>(
        "GET",
        `/api/v1/rooms/${room}/messages?after_seq=${after}&limit=200`,
        { token: user.access },
      );
      all.push(...page.messages);
      if (!page.has_more || page.messages.length === 0) return all;
      after = page.messages[page.messages.length - 1].seq;
    }
  }
}

export interface AuthResponse {
  user: { id: string };
  access_token: string;
  refresh_token: string;
  expires_in_ms: number;
}

export interface HistoryEntry {
  type: "message" | "edit" | "delete";
  room: string;
  seq: number;
  sender: string;
  body: string;
  client_msg_id: string;
  target_seq?: number;
  deleted?: boolean;
}

/**
 * A token provider for the SDK backed by the refresh endpoint: each call
 * rotates the refresh token (serialized: a spent refresh token presented
 * twice would revoke the session) and counts the calls.
 */
export function refreshingTokens(api: Api, user: User): { provider: () => Promise<string>; calls: () => number } {
  let calls = 0;
  const provider = (): Promise<string> => {
    calls++;
    const prev = refreshChains.get(user) ?? Promise.resolve();
    const next = prev.then(() => api.refresh(user)).then((r) => r.access_token);
    refreshChains.set(
      user,
      next.catch(() => undefined),
    );
    return next;
  };
  return { provider, calls: () => calls };
}

/** One chain per user, shared by every provider of that user (two clients of one user must not race a refresh). */
const refreshChains = new WeakMap<User, Promise<unknown>>();

/**
 * A copy of `token` with `exp` in the past, signed with the test's JWT
 * secret: an expired credential without waiting for one to expire.
 */
export function expiredCopy(token: string): string {
  const [h, p] = token.split(".");
  const claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8")) as Record<string, unknown>;
  const now = Math.floor(Date.now() / 1000);
  claims.iat = now - 3600;
  claims.exp = now - 1800;
  if ("nbf" in claims) claims.nbf = now - 3600;
  const payload = Buffer.from(JSON.stringify(claims)).toString("base64url");
  const sig = createHmac("sha256", JWT_SECRET).update(`${h}.${payload}`).digest("base64url");
  return `${h}.${payload}.${sig}`;
}

// ---------------------------------------------------------------------------
// Observing the SDK's sockets from outside.

/** One text frame on a socket, as it crossed the wire (before the SDK saw it / after it wrote it). */
export interface RawFrame {
  dir: "in" | "out";
  at: number;
  /** The parsed JSON (undefined when the text is not JSON). */
  frame: Record<string, unknown> | undefined;
}

export interface SocketRecord {
  ws: WebSocket;
  url: string;
  createdAt: number;
  openedAt?: number;
  closedAt?: number;
  closeCode?: number;
  closeReason?: string;
  /** Every frame received and sent on this socket, in order. */
  frames: RawFrame[];
}

function parseFrame(data: unknown): Record<string, unknown> | undefined {
  try {
    const text = Array.isArray(data) ? Buffer.concat(data as Buffer[]).toString("utf8") : String(data);
    const v: unknown = JSON.parse(text);
    return v && typeof v === "object" ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A `ws` subclass that records every socket the SDK opens (when, to which
 * URL, how it closed, every frame in and out), so tests can assert
 * reconnect timing and counts, what reached the client before its dedupe,
 * and can freeze a socket's reading (`pauseReading`) to make a slow
 * consumer without touching SDK internals.
 */
export function trackedWebSocket(): {
  WebSocket: new (...args: ConstructorParameters<typeof WebSocket>) => WebSocket;
  sockets: SocketRecord[];
  current(): SocketRecord | undefined;
  pauseReading(): void;
} {
  const sockets: SocketRecord[] = [];
  class TrackedWebSocket extends WebSocket {
    constructor(...args: ConstructorParameters<typeof WebSocket>) {
      super(...args);
      const rec: SocketRecord = { ws: this, url: String(args[0]), createdAt: Date.now(), frames: [] };
      sockets.push(rec);
      // The raw frames, before the SDK drops duplicates and heals gaps
      // (registered first: ws calls listeners in order, the SDK's later).
      this.on("message", (data: unknown) => {
        rec.frames.push({ dir: "in", at: Date.now(), frame: parseFrame(data) });
      });
      const send = this.send.bind(this) as (data: unknown, ...rest: unknown[]) => void;
      (this as unknown as { send: typeof send }).send = (data: unknown, ...rest: unknown[]) => {
        rec.frames.push({ dir: "out", at: Date.now(), frame: parseFrame(data) });
        send(data, ...rest);
      };
      this.on("open", () => {
        rec.openedAt = Date.now();
      });
      this.on("close", (code: number, reason: Buffer) => {
        rec.closedAt = Date.now();
        rec.closeCode = code;
        rec.closeReason = reason.toString();
      });
      // The SDK handles errors; this only keeps an unhandled 'error' from crashing the test process.
      this.on("error", () => undefined);
    }
  }
  return {
    WebSocket: TrackedWebSocket,
    sockets,
    current: () => sockets[sockets.length - 1],
    pauseReading() {
      const rec = sockets[sockets.length - 1];
      const raw = (rec?.ws as unknown as { _socket?: { pause(): void } })._socket;
      if (!raw) throw new Error("no open socket to pause");
      raw.pause();
    },
  };
}

// ---------------------------------------------------------------------------
// Recording what the SDK delivers.

/** Everything one Room emitted, in arrival order. */
export class RoomLog {
  readonly messages: ServerMessage[] = [];
  readonly edits: ServerEdit[] = [];
  readonly deletes: ServerDelete[] = [];
  private offs: Array<() => void> = [];

  constructor(readonly room: Room) {
    this.offs.push(
      room.on("message", (m: ServerMessage) => {
        this.messages.push(m);
      }),
    );
    this.offs.push(
      room.on("edit", (e: ServerEdit) => {
        this.edits.push(e);
      }),
    );
    this.offs.push(
      room.on("delete", (d: ServerDelete) => {
        this.deletes.push(d);
      }),
    );
  }

  get seqs(): number[] {
    return this.messages.map((m) => m.seq);
  }

  get bodies(): string[] {
    return this.messages.map((m) => m.body);
  }

  /** Waits until `n` messages arrived (more would be a duplicate: checked by the assertions). */
  async waitCount(n: number, what = `${n} messages in ${this.room.id}`): Promise<void> {
    await eventually(what, () => this.messages.length >= n, { state: () => this.seqs });
  }

  stop(): void {
    for (const off of this.offs) off();
    this.offs = [];
  }
}

/**
 * The core assertion of every test: the seqs are exactly `from..to`, each
 * once, ascending (no loss, no duplicate, in order).
 */
export function assertExactSeqs(seqs: number[], from: number, to: number, who: string): void {
  const want = Array.from({ length: to - from + 1 }, (_, i) => from + i);
  if (seqs.length !== want.length || seqs.some((s, i) => s !== want[i])) {
    const dup = seqs.filter((s, i) => seqs.indexOf(s) !== i);
    const missing = want.filter((s) => !seqs.includes(s));
    throw new Error(
      `${who}: expected seqs ${from}..${to} exactly once in order; got ${JSON.stringify(seqs)} (duplicates ${JSON.stringify(dup)}, missing ${JSON.stringify(missing)})`,
    );
  }
}

/** What the raw frames of a client's sockets show (see {@link wireFaults}). */
export interface WireFaults {
  /** Stream frames (message, edit, delete) with a seq the client already held. */
  duplicates: string[];
  /** Stream frames beyond the held seq + 1, and `joined` frames whose last_seq the replay fell short of. */
  gaps: string[];
  /** join/sync entries whose since_seq is below what the client held. */
  lowAsks: string[];
}

/**
 * Reads every frame that crossed a client's sockets, in order, and tracks
 * per room the highest seq the client holds, h, from the wire alone (not
 * from the SDK): h starts at the `since_seq` of the room's first join or
 * sync entry (or, without one, at the `last_seq` of its first `joined`),
 * moves to seq when a stream frame (message, edit, delete) has seq = h + 1,
 * to `last_seq` on `reset` and to at least `oldest_seq - 1` on
 * `history_gone`; a room left (`leave`) or removed (`left`, `room_removed`)
 * is forgotten by the SDK, and a later join of it starts over. Then:
 *
 * - a **duplicate** is a stream frame with seq <= h: the client held it
 *   already, whether it came earlier on the same socket or on an earlier
 *   one (a resume must replay only seqs above the since_seq it asked for);
 * - a **gap** is a stream frame with seq > h + 1, or a `joined` whose
 *   last_seq is above h (its replay ended short);
 * - a **low ask** is a join or sync entry with a since_seq below h: the SDK
 *   asked for a replay of what it had (the server would send duplicates
 *   that the SDK's dedupe hides).
 *
 * So a frame replayed on a new socket after a reconnect is no duplicate
 * unless it was at or below what the client held: the only frames that may
 * legitimately come twice are ones that came beyond a gap (dropped, then
 * replayed), and those are counted as gaps.
 */
export function wireFaults(kit: ClientKit): WireFaults {
  const out: WireFaults = { duplicates: [], gaps: [], lowAsks: [] };
  const held = new Map<string, number | undefined>();
  const ask = (i: number, room: string, since: unknown) => {
    if (typeof since !== "number") {
      if (!held.has(room)) held.set(room, undefined);
      return;
    }
    const h = held.get(room);
    if (h !== undefined && since < h) out.lowAsks.push(`socket ${i}: room ${room} since_seq ${since} < held ${h}`);
    if (!held.has(room) || h === undefined) held.set(room, since);
  };
  kit.ws.sockets.forEach((rec, i) => {
    for (const { dir, frame: f } of rec.frames) {
      if (!f) continue;
      const room = String(f.room);
      if (dir === "out") {
        if (f.type === "leave") held.delete(room);
        if (f.type === "join") ask(i, room, f.since_seq);
        if (f.type === "sync" && Array.isArray(f.rooms)) {
          for (const e of f.rooms as Array<Record<string, unknown>>) ask(i, String(e.room), e.since_seq);
        }
        continue;
      }
      const h = held.get(room);
      if (f.type === "message" || f.type === "edit" || f.type === "delete") {
        const seq = Number(f.seq);
        if (h === undefined) continue; // before its first joined (live edge): nothing held yet
        if (seq <= h) out.duplicates.push(`socket ${i}: ${String(f.type)} room ${room} seq ${seq} (held ${h})`);
        else if (seq === h + 1) held.set(room, seq);
        else out.gaps.push(`socket ${i}: ${String(f.type)} room ${room} seq ${seq} after ${h}`);
      } else if (f.type === "joined") {
        const last = Number(f.last_seq);
        if (h === undefined) held.set(room, last);
        else if (last > h) out.gaps.push(`socket ${i}: joined room ${room} last_seq ${last} above held ${h}`);
      } else if (f.type === "reset") {
        held.set(room, Number(f.last_seq));
      } else if (f.type === "history_gone") {
        held.set(room, Math.max(h ?? 0, Number(f.oldest_seq) - 1));
      } else if (f.type === "left" || f.type === "room_removed") {
        held.delete(room); // the SDK forgets the room: a later join starts a new local copy
      }
    }
  });
  return out;
}

/**
 * Asserts what {@link wireFaults} reads: no duplicate reached the client's
 * sockets, the SDK never asked below what it held, and gaps occurred (on
 * the wire) and were recovered (by the SDK's counter) exactly `gaps` times.
 */
export function assertCleanWire(kit: ClientKit, who: string, opts: { gaps?: number } = {}): void {
  const f = wireFaults(kit);
  const frames = kit.ws.sockets.reduce((n, s) => n + s.frames.length, 0);
  assert.ok(frames > 0, `${who}: frames were recorded`);
  assert.deepEqual(f.duplicates.slice(0, 20), [], `${who}: ${f.duplicates.length} duplicates reached the socket`);
  assert.deepEqual(f.lowAsks.slice(0, 20), [], `${who}: the SDK asked for a replay below what it held`);
  assert.equal(f.gaps.length, opts.gaps ?? 0, `${who}: gaps on the wire: ${JSON.stringify(f.gaps.slice(0, 10))}`);
  assert.equal(kit.client.gapRecoveries, opts.gaps ?? 0, `${who}: the SDK's gap recoveries`);
}

/** Waits for the client to reach `state` (checked on every state event and by polling). */
export async function waitState(client: ChatClient, state: string, timeoutMs = WAIT_MS): Promise<void> {
  await eventually(`client state ${state}`, () => client.state === state, { timeoutMs, state: () => client.state });
}

// ---------------------------------------------------------------------------
// SDK clients under observation.

export type ClientOptions = ConstructorParameters<typeof ChatClient>[0];

export interface StateChange {
  state: ClientState;
  info?: { code?: number; reason?: string; delayMs?: number; error?: ChatError };
  at: number;
}

/** A ChatClient plus everything observed about it: sockets, states, errors, token calls, SDK logs. */
export interface ClientKit {
  client: ChatClient;
  ws: ReturnType<typeof trackedWebSocket>;
  states: StateChange[];
  errors: ChatError[];
  logs: string[];
  tokenCalls: () => number;
  store: Store;
  user: User;
  /** `reconnecting` states that said neither code nor error (checked after every test). */
  silentReconnects: StateChange[];
}

export interface ClientKitOptions {
  url: string | string[] | (() => string);
  store?: Store;
  /** Overrides the default refresh-backed token provider. */
  token?: () => Promise<string>;
  ticket?: () => Promise<string>;
  heartbeat?: "app" | "ws" | "auto";
  /** Fast backoff by default: the tests are about behaviour, not the SDK's patience. */
  backoff?: { baseMs: number; maxMs: number };
  /** Do not pass a token provider at all (ticket-only clients). */
  noToken?: boolean;
}

// ---------------------------------------------------------------------------
// Per-test resource owner.

/**
 * Owns everything one test starts (gateways, databases, Redis servers,
 * clients) and releases it at the end, printing every gateway's log tail
 * when the test failed.
 */
export class Harness {
  private readonly gateways: Gateway[] = [];
  private readonly dbs: Database[] = [];
  private readonly redises: RedisServer[] = [];
  private readonly clients: Array<{ close(): void }> = [];
  private readonly cleanups: Array<() => unknown> = [];

  async sqlite(): Promise<Database> {
    const db = sqliteDb();
    this.dbs.push(db);
    return db;
  }

  async postgres(): Promise<Database> {
    const db = await postgresDb();
    this.dbs.push(db);
    return db;
  }

  async redis(): Promise<RedisServer> {
    const r = await RedisServer.start();
    this.redises.push(r);
    return r;
  }

  /** A gateway on `db` (a fresh SQLite database when omitted); `metrics` opens its `/metrics` listener. */
  async gateway(
    opts: { db?: Database; env?: Record<string, string>; name?: string; port?: number; metrics?: boolean } = {},
  ): Promise<Gateway> {
    const db = opts.db ?? (await this.sqlite());
    const env = { ...opts.env };
    if (opts.metrics) env.METRICS_ADDR = `127.0.0.1:${await freePort()}`;
    const g = await Gateway.start(db, { ...opts, env });
    this.gateways.push(g);
    return g;
  }

  /**
   * Two gateway instances on one PostgreSQL database and one Redis of the
   * test's own (the cluster the SDK switches between).
   */
  async cluster(
    env: Record<string, string> = {},
  ): Promise<{ a: Gateway; b: Gateway; db: Database; redis: RedisServer }> {
    const [db, redis] = await Promise.all([this.postgres(), this.redis()]);
    const common = { REDIS_URL: redis.url, REDIS_PREFIX: `${uniq("sdk")}:`, REDIS_TIMEOUT_MS: "500", ...env };
    // One after the other: the first runs the migrations.
    const a = await this.gateway({ db, name: "a", env: common });
    const b = await this.gateway({ db, name: "b", env: common });
    return { a, b, db, redis };
  }

  private readonly kits: Array<{ name: string; kit: ClientKit }> = [];

  /**
   * A ChatClient for `user` over the `ws` package, with tracked sockets,
   * recorded state changes and errors, and SDK logs kept for failure
   * reports. Not connected yet.
   */
  client(api: Api, user: User, opts: ClientKitOptions): ClientKit {
    const ws = trackedWebSocket();
    const tokens = refreshingTokens(api, user);
    let tokenCalls = 0;
    const token = opts.token ?? tokens.provider;
    const store = opts.store ?? new MemoryStore();
    const logs: string[] = [];
    const options: ClientOptions = {
      url: opts.url,
      WebSocket: ws.WebSocket as unknown as ClientOptions["WebSocket"],
      store,
      heartbeat: opts.heartbeat ?? "auto",
      backoff: opts.backoff ?? { baseMs: 100, maxMs: 1000 },
      onLog: (level: string, msg: string, data?: unknown) => {
        logs.push(`${new Date().toISOString()} ${level} ${msg}${data === undefined ? "" : ` ${safeJson(data)}`}`);
        if (logs.length > 300) logs.shift();
      },
    };
    if (!opts.noToken) {
      options.token = async () => {
        tokenCalls++;
        return token();
      };
    }
    if (opts.ticket) options.ticket = opts.ticket;
    const client = new ChatClient(options);
    const kit: ClientKit = {
      client,
      ws,
      states: [],
      errors: [],
      logs,
      tokenCalls: () => tokenCalls,
      store,
      user,
      silentReconnects: [],
    };
    client.on("state", (state: ClientState, info?: StateChange["info"]) => {
      const change = { state, info, at: Date.now() };
      kit.states.push(change);
      if (state === "reconnecting" && info?.code === undefined && info?.error === undefined) {
        kit.silentReconnects.push(change);
      }
    });
    client.on("error", (e: ChatError) => {
      kit.errors.push(e);
    });
    this.kits.push({ name: user.name, kit });
    this.track(client);
    return kit;
  }

  /** Registers a client (or anything closable) to be closed at the end. */
  track<T extends { close(): void }>(c: T): T {
    this.clients.push(c);
    return c;
  }

  onCleanup(fn: () => unknown): void {
    this.cleanups.push(fn);
  }

  /** Every `reconnecting` state of every client said why (a close code or an error). */
  assertReconnectsExplained(): void {
    for (const { name, kit } of this.kits) {
      assert.deepEqual(kit.silentReconnects, [], `${name}: reconnecting states without code or error`);
    }
  }

  /**
   * No client of the test got a duplicate on the wire or asked for a replay
   * below what it held ({@link wireFaults}); gaps are asserted by the tests
   * that expect none ({@link assertCleanWire}).
   */
  assertNoWireDuplicates(): void {
    for (const { name, kit } of this.kits) {
      const f = wireFaults(kit);
      assert.deepEqual(f.duplicates.slice(0, 20), [], `${name}: ${f.duplicates.length} duplicates reached the socket`);
      assert.deepEqual(f.lowAsks.slice(0, 20), [], `${name}: the SDK asked for a replay below what it held`);
    }
  }

  logs(n = 40): string {
    const gw = this.gateways.map((g) => `--- gateway ${g.name} (port ${g.port}) log tail ---\n${g.tail(n)}`);
    const sdk = this.kits.map(
      ({ name, kit }) =>
        `--- client ${name}: state ${kit.client.state}, sockets ${safeJson(kit.ws.sockets.map((s) => ({ url: s.url, t: s.createdAt, code: s.closeCode, reason: s.closeReason })))}, ` +
        `states ${safeJson(kit.states.map((s) => [s.state, s.info?.code, s.info?.delayMs]))}, errors ${safeJson(kit.errors.map((e) => e.code))} ---\n${kit.logs.slice(-n).join("\n")}`,
    );
    return [...gw, ...sdk].join("\n");
  }

  async dispose(): Promise<void> {
    for (const c of this.clients) {
      try {
        c.close();
      } catch {
        // best effort
      }
    }
    for (const fn of this.cleanups) await Promise.resolve(fn()).catch(() => undefined);
    await Promise.all(this.gateways.map((g) => g.dispose()));
    await Promise.all(this.redises.map((r) => r.stop()));
    await Promise.all(this.dbs.map((d) => d.drop()));
  }
}

/**
 * `node:test`'s `test` with a {@link Harness}: resources are released after
 * the body, and on failure the gateways' log tails are printed.
 */
export function e2e(
  name: string,
  fn: (h: Harness, t: TestContext) => Promise<void>,
  opts: { timeoutMs?: number } = {},
): void {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  // Our own deadline, below node:test's, so the cleanup below always runs
  // (a hung body would otherwise leave gateways and sockets behind).
  test(name, { timeout: timeoutMs + 30_000 }, async (t) => {
    const h = new Harness();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        fn(h, t),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`${name}: timed out after ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      h.assertReconnectsExplained();
      h.assertNoWireDuplicates();
    } catch (e) {
      process.stderr.write(`\n=== ${name} failed: gateway logs ===\n${h.logs()}\n`);
      throw e;
    } finally {
      clearTimeout(timer);
      await h.dispose();
    }
  });
}
