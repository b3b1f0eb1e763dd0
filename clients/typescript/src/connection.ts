/**
 * The connection's lifecycle (protocol §7, §9, §10, §12): one socket at a
 * time; a credential for each attempt, the wait for `hello`, heartbeats and
 * the liveness watchdog, the close codes' decisions (reconnect with backoff,
 * or give up), token renewal over the socket, and the client's state
 * (idle → connecting → online ⇄ reconnecting → closed). On `hello` it hands
 * the socket to the resume; frames go to dispatch, which calls back here
 * (`Lifecycle`) for hello, auth_ok and a refused renewal.
 */
import { Backoff, type BackoffOptions } from "./backoff.js";
import type { Dispatcher, Lifecycle } from "./dispatch.js";
import { ChatError } from "./errors.js";
import type { ServerAuthOk, ServerError, ServerHello } from "./generated/protocol.js";
import { decideOnClose, decideOnHandshake, renewalDelay, type Decision } from "./policy.js";
import type { Pump } from "./pump.js";
import type { Resumer } from "./resume.js";
import type { Session } from "./session.js";
import {
  handshakeStatus,
  isNodeWs,
  killSocket,
  onWsPing,
  openSocket,
  type SocketLike,
  type WebSocketConstructor,
} from "./transport.js";
import { Connection, Ids, type Log } from "./wire.js";

export type ClientState = "idle" | "connecting" | "online" | "reconnecting" | "closed";
export type HeartbeatMode = "app" | "ws" | "auto";

export interface StateInfo {
  /** Close code of the socket that ended (or an HTTP status for a refused handshake). */
  code?: number;
  reason?: string;
  /** Delay before the next attempt. */
  delayMs?: number;
  /**
   * With "closed" after a fatal refusal; with "reconnecting" when no socket
   * ended (the credential provider failed: code "provider_failed"; the
   * socket could not be created: code "network"). Every "reconnecting"
   * carries `code` or `error`.
   */
  error?: ChatError;
}

/**
 * A credential provider: may fetch over REST. The SDK calls a `token`
 * provider one call at a time per client (concurrent needs share the call in
 * flight); a `ticket` provider is called once per connection attempt.
 */
export type CredentialProvider = () => string | Promise<string>;

/** The options of `ChatClientOptions` the connection reads (documented there). */
export interface ConnectOptions {
  url: string | string[] | (() => string);
  token?: CredentialProvider;
  ticket?: CredentialProvider;
  WebSocket?: unknown;
  heartbeat?: HeartbeatMode;
  backoff?: BackoffOptions;
  connectTimeoutMs?: number;
}

/** The client's events the lifecycle raises. */
export interface ConnectorEvents {
  state(s: ClientState, info: StateInfo | undefined): void;
  error(err: ChatError): void;
  hello(h: ServerHello): void;
}

/** What the connection needs from the client around it. */
export interface ConnectorDeps {
  options: ConnectOptions;
  session: Session;
  resume: Resumer;
  pump: Pump;
  dispatch: Dispatcher;
  events: ConnectorEvents;
  /** Replaces rooms and outbox with another user's stored state. */
  loadUser(userId: string): Promise<void>;
  log: Log;
  random: () => number;
}

/** A connection that lived this long resets the backoff (§7 "stayed up for a while"). */
const STABLE_AFTER_MS = 5_000;
/** Consecutive refused credentials (401 / 4001 right away) before giving up. */
const MAX_AUTH_FAILURES = 3;

interface Deferred<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

/**
 * Stops listening to a socket we are done with. onerror stays a no-op: `ws`
 * emits "error" when a handshake in progress is aborted, and an "error"
 * without listener would crash the process.
 */
function detach(socket: SocketLike): void {
  socket.onclose = null;
  socket.onmessage = null;
  socket.onopen = null;
  socket.onerror = () => {};
}

export class Connector implements Lifecycle {
  #state: ClientState = "idle";
  /** The last hello of any socket (the client's `hello` getter). */
  #hello: ServerHello | undefined;
  #conn: Connection | undefined;
  readonly #ids = new Ids();
  readonly #backoff: Backoff;
  readonly #WebSocket: WebSocketConstructor | undefined;
  readonly #nodeWs: boolean;
  #urlIndex = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #authFailures = 0;
  #connectWaiters: Array<Deferred<void>> = [];
  #tokenInFlight: Promise<string> | undefined;

  constructor(readonly deps: ConnectorDeps) {
    const { options } = deps;
    this.#backoff = new Backoff(options.backoff ?? {}, deps.random);
    const ws = (options.WebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket) as WebSocketConstructor | undefined;
    this.#WebSocket = ws;
    this.#nodeWs = isNodeWs(ws);
  }

  get state(): ClientState {
    return this.#state;
  }
  get hello(): ServerHello | undefined {
    return this.#hello;
  }
  /** The current socket, if any. */
  get conn(): Connection | undefined {
    return this.#conn;
  }
  /** A method, not a field read, so TypeScript does not narrow it across awaits. */
  closed(): boolean {
    return this.#state === "closed";
  }
  /** The heartbeat mode this client asks for ("auto" resolved). */
  get heartbeatMode(): "app" | "ws" {
    const h = this.deps.options.heartbeat ?? "auto";
    if (h !== "auto") return h;
    return this.#nodeWs ? "ws" : "app";
  }

  /** See `ChatClient.connect`; `restore` loads the store first. */
  connect(restore: () => Promise<void>): Promise<void> {
    if (this.#state === "closed") return Promise.reject(new ChatError("closed", "client is closed"));
    const p = new Promise<void>((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === "idle") {
      this.#setState("connecting");
      void restore().then(
        () => this.#attempt(),
        (err) => this.#fail(new ChatError("internal", `restore failed: ${String(err)}`)),
      );
    } else if (this.#conn?.resumed) {
      this.resolveConnect();
    }
    return p;
  }

  /** Closes for good (1000) and stops reconnecting. */
  close(): void {
    if (this.#state === "closed") return;
    this.#setState("closed");
    this.#teardown(new ChatError("closed", "client closed"));
  }

  /** The resume is done: connect() resolves. */
  resolveConnect(): void {
    for (const w of this.#connectWaiters.splice(0)) w.resolve();
  }

  // ---------------------------------------------------------- attempts

  #pickUrl(): string {
    const u = this.deps.options.url;
    if (typeof u === "function") return u();
    if (typeof u === "string") return u;
    if (u.length === 0) throw new TypeError("ChatClient: empty url list");
    const url = u[this.#urlIndex % u.length]!;
    this.#urlIndex++;
    return url;
  }

  /** One connection attempt: a credential, then a socket and its handlers. */
  async #attempt(): Promise<void> {
    const { options, log } = this.deps;
    this.#reconnectTimer = undefined;
    if (this.#state === "closed") return;
    const Ctor = this.#WebSocket;
    if (!Ctor) {
      this.#fail(new ChatError("bad_request", "no WebSocket implementation: pass options.WebSocket (e.g. `ws` on Node)"));
      return;
    }
    const useTicket = !!options.ticket;
    if (!useTicket && !this.#nodeWs) {
      this.#fail(
        new ChatError("bad_request", "token auth needs a WebSocket that can set headers (Node `ws`); pass a ticket provider"),
      );
      return;
    }
    let credential: string;
    try {
      credential = useTicket ? await options.ticket!() : await this.#callToken();
    } catch (err) {
      if (this.closed()) return;
      // A provider that says the user is logged out ends it; anything else
      // (REST unreachable...) is retried like a network error.
      const code = err instanceof ChatError ? err.code : undefined;
      if (code === "unauthorized" || code === "forbidden") {
        this.#fail(err as ChatError);
        return;
      }
      log("warn", "credential provider failed; retrying", err);
      const error =
        err instanceof ChatError ? err : new ChatError("provider_failed", `credential provider failed: ${String(err)}`);
      this.#scheduleReconnect(this.#backoff.next(), { reason: "credential provider failed", error });
      return;
    }
    if (this.closed()) return;
    let url: string;
    let socket: SocketLike;
    try {
      url = this.#pickUrl();
      socket = openSocket({
        url,
        WebSocket: Ctor,
        ...(useTicket ? { ticket: credential } : { token: credential }),
        appHeartbeat: this.heartbeatMode === "app",
      });
    } catch (err) {
      log("error", "cannot open socket", err);
      this.#scheduleReconnect(this.#backoff.next(), {
        reason: String(err),
        error: new ChatError("network", `cannot open socket: ${String(err)}`),
      });
      return;
    }
    const conn = new Connection(socket, url, this.#ids, log);
    this.#conn = conn;
    log("debug", "connecting", { url });
    const connectTimeout = options.connectTimeoutMs ?? 15_000;
    conn.timer(connectTimeout, () => {
      if (!conn.hello) this.#abort(conn, "no hello in time");
    });
    socket.onopen = () => log("debug", "socket open", { url });
    socket.onerror = (ev) => {
      if (!conn.live) return;
      const status = handshakeStatus(ev);
      if (status !== undefined) conn.handshakeStatus = status;
      log("debug", "socket error", { status, message: (ev as { message?: unknown })?.message });
    };
    socket.onclose = (ev) => {
      if (!conn.live) return;
      this.#onLost(conn, ev.code, ev.reason ?? "");
    };
    socket.onmessage = (ev) => {
      if (!conn.live) return;
      this.#armLiveness(conn);
      this.deps.dispatch.onData(conn, ev.data);
    };
    // Node `ws` exposes WebSocket pings: they prove the server is alive.
    onWsPing(socket, () => {
      if (conn.live) this.#armLiveness(conn);
    });
  }

  /** Makes the current socket no longer current (its late events change nothing). */
  #drop(): Connection | undefined {
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn) conn.live = false;
    return conn;
  }

  /** Drops a socket we consider dead, without waiting for a close handshake. */
  #abort(conn: Connection, why: string): void {
    if (!conn.live) return;
    this.deps.log("warn", `dropping connection: ${why}`);
    detach(conn.socket);
    killSocket(conn.socket, 4000, why);
    this.#onLost(conn, 1006, why);
  }

  /** The socket ended: decide by its close code (or handshake status) whether and when to reconnect. */
  #onLost(conn: Connection, code: number, reason: string): void {
    if (!conn.live) return;
    this.#drop();
    conn.dispose();
    // Queued frames fail now (their socket is gone): a queued leave resolves.
    for (const f of conn.bucket.queue.splice(0)) f();
    this.deps.pump.onSocketLost();
    for (const room of this.deps.session.rooms.values()) {
      room.joinedOnSocket = false;
      room.pendingJoins = 0;
    }
    for (const req of conn.requests.values()) if (req.kind === "leave") req.resolve?.();
    if (this.#state === "closed") return;

    let decision: Decision;
    let shownCode = code;
    if (!conn.hello && conn.handshakeStatus !== undefined) {
      shownCode = conn.handshakeStatus;
      decision = decideOnHandshake(conn.handshakeStatus, this.#backoff, this.deps.random);
    } else if (!conn.hello) {
      decision = decideOnHandshake(undefined, this.#backoff, this.deps.random);
    } else {
      decision = decideOnClose(code, reason, this.#backoff, this.deps.random);
    }
    this.deps.log("info", "connection lost", { code: shownCode, reason, hello: !!conn.hello });
    if (decision.reconnect && decision.authFailure) {
      // A 4001 at the credential's expiry is normal (ticket-only clients, or
      // a renewal that failed): a fresh credential fixes it. A refused
      // handshake, or a 4001 long before expiry (session revoked), means the
      // provider's credential is bad: count those.
      const expired = !!conn.hello && Date.now() >= conn.expiresAtLocal - 2_000;
      if (expired) this.#authFailures = 0;
      else this.#authFailures++;
      if (this.#authFailures >= MAX_AUTH_FAILURES) {
        decision = {
          reconnect: false,
          error: new ChatError("unauthorized", `credential refused ${this.#authFailures} times in a row`, {
            closeCode: code,
          }),
        };
      }
    }
    if (!decision.reconnect) {
      this.#fail(decision.error);
      return;
    }
    this.#scheduleReconnect(decision.delayMs, { code: shownCode, reason: reason || decision.why });
  }

  #scheduleReconnect(delayMs: number, info: StateInfo): void {
    if (this.#state === "closed") return;
    this.#setState("reconnecting", { ...info, delayMs });
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => void this.#attempt(), delayMs);
  }

  /** Fatal: state closed, no reconnect, everyone waiting is told. */
  #fail(err: ChatError): void {
    if (this.#state === "closed") return;
    this.deps.log("error", "giving up", err);
    this.#setState("closed", { error: err, ...(err.closeCode !== undefined ? { code: err.closeCode } : {}) });
    this.#teardown(err);
    this.deps.events.error(err);
  }

  /** Ends everything for good: timers, the socket (1000), every promise waiting; the store is flushed. */
  #teardown(err: ChatError): void {
    const { pump, session } = this.deps;
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    pump.stop();
    this.#reconnectTimer = undefined;
    const conn = this.#drop();
    if (conn) {
      conn.dispose();
      for (const f of conn.bucket.queue.splice(0)) f();
      detach(conn.socket);
      try {
        conn.socket.close(1000, "client closed");
      } catch {
        /* not open yet */
      }
      for (const req of conn.requests.values()) req.resolve?.();
    }
    this.#state = "closed";
    for (const w of this.#connectWaiters.splice(0)) w.reject(err);
    pump.rejectAll(err);
    for (const room of session.rooms.values()) {
      room.joinedOnSocket = false;
      for (const w of room.joinWaiters.splice(0)) w.reject(err);
      for (const w of room.readWaiters.splice(0)) w.reject(err);
      room.endIterators();
    }
    void session.flush().catch((e) => this.deps.log("error", "store write failed", e));
  }

  #setState(s: ClientState, info?: StateInfo): void {
    const changed = this.#state !== s;
    this.#state = s;
    // "reconnecting" repeats with a new delay on each failed attempt: tell the app.
    if (changed || s === "reconnecting") this.deps.events.state(s, info);
  }

  // ---------------------------------------------------------- hello, heartbeats

  /** A socket's hello: limits, credential lifetime, heartbeats; then the app's rooms are resumed. */
  onHello(conn: Connection, h: ServerHello): void {
    const { session, log } = this.deps;
    if (conn.hello) {
      log("warn", "second hello ignored");
      return;
    }
    conn.hello = h;
    if (h.limits) conn.bucket.configure(h.limits.events_burst, h.limits.events_per_sec);
    if (typeof h.limits?.send_burst === "number" && typeof h.limits.send_per_sec === "number") {
      conn.sendBucket.configure(h.limits.send_burst, h.limits.send_per_sec);
    }
    const previousUser = session.userId;
    session.userId = h.user_id;
    this.#hello = h;
    // Credential lifetime, from the relative field (device clocks may be off).
    const expiresIn =
      typeof h.token_expires_in_ms === "number" ? h.token_expires_in_ms : h.token_expires_at - Date.now();
    conn.expiresAtLocal = Date.now() + expiresIn;
    this.#scheduleRenewal(conn, expiresIn);
    this.#setupHeartbeat(conn, h);
    conn.timer(STABLE_AFTER_MS, () => {
      this.#backoff.reset();
      this.#authFailures = 0;
    });
    const go = () => {
      if (!conn.live) return;
      this.#setState("online");
      this.deps.events.hello(h);
      session.persistSoon();
      this.deps.resume.resume(conn);
    };
    if (previousUser !== undefined && previousUser !== h.user_id) {
      // Another user signed in with the same store: their rooms and outbox
      // are theirs; load this user's state instead.
      log("info", "user changed; loading that user's state", { from: previousUser, to: h.user_id });
      void this.deps.loadUser(h.user_id).then(go, (err) => {
        log("error", "store read failed", err);
        go();
      });
    } else go();
  }

  #setupHeartbeat(conn: Connection, h: ServerHello): void {
    const hb = typeof h.heartbeat_ms === "number" && h.heartbeat_ms > 0 ? h.heartbeat_ms : 25_000;
    const mode = (h as Partial<ServerHello>).heartbeat ?? "ws";
    conn.livenessMs = 2 * hb + Math.max(1_000, Math.floor(hb / 2));
    this.#armLiveness(conn);
    if (mode === "ws" && !this.#nodeWs) {
      // WebSocket pings are invisible here: probe with client `ping`s so a
      // quiet but healthy connection keeps showing traffic.
      conn.pingInterval = setInterval(() => {
        if (conn.live) conn.request({ type: "ping" }, { kind: "ping" });
      }, hb);
    }
  }

  /** §9 liveness: nothing at all from the server for 2 x heartbeat_ms (+ margin) means dead. */
  #armLiveness(conn: Connection): void {
    if (!conn.livenessMs) return;
    if (conn.livenessTimer) clearTimeout(conn.livenessTimer);
    conn.livenessTimer = setTimeout(() => this.#abort(conn, "heartbeat timeout"), conn.livenessMs);
  }

  // ---------------------------------------------------------- renewal

  onAuthOk(conn: Connection, a: ServerAuthOk): void {
    conn.takeRequest(a.id);
    conn.expiresAtLocal = Date.now() + a.expires_in_ms;
    this.deps.log("debug", "credential renewed", { expiresInMs: a.expires_in_ms });
    this.#scheduleRenewal(conn, a.expires_in_ms);
  }

  onAuthRefused(conn: Connection, e: ServerError, err: ChatError): void {
    // The connection works until the old credential expires: retry.
    const remaining = conn.expiresAtLocal - Date.now();
    const delay = Math.max(500, Math.min(10_000, Math.floor(remaining / 3)));
    this.deps.log("warn", `renewal refused (${e.code}); retrying in ${delay} ms`);
    if (e.code === "rate_limited") this.deps.events.error(err);
    conn.timer(e.code === "rate_limited" ? (e.retry_after_ms ?? delay) : delay, () => void this.#renew(conn));
  }

  #scheduleRenewal(conn: Connection, expiresInMs: number): void {
    if (!this.deps.options.token) return; // ticket only: 4001 reconnects with a fresh ticket
    if (!Number.isFinite(expiresInMs)) return;
    conn.timer(renewalDelay(expiresInMs), () => void this.#renew(conn));
  }

  async #renew(conn: Connection): Promise<void> {
    let token: string;
    try {
      token = await this.#callToken();
    } catch (err) {
      const remaining = conn.expiresAtLocal - Date.now();
      const delay = Math.max(500, Math.min(10_000, Math.floor(remaining / 3)));
      this.deps.log("warn", `token provider failed; retrying renewal in ${delay} ms`, err);
      conn.timer(delay, () => void this.#renew(conn));
      return;
    }
    if (!conn.live) return;
    conn.request({ type: "auth", token }, { kind: "auth" });
  }

  /**
   * Calls the token provider, one call at a time: a renewal and a reconnect
   * that need a token at once share one call. Why: a provider that rotates
   * refresh tokens and is called twice concurrently presents the same
   * refresh token twice, and the server treats the second as a reuse.
   */
  #callToken(): Promise<string> {
    if (!this.#tokenInFlight) {
      const p = Promise.resolve().then(() => this.deps.options.token!());
      this.#tokenInFlight = p;
      const clear = () => {
        if (this.#tokenInFlight === p) this.#tokenInFlight = undefined;
      };
      p.then(clear, clear);
    }
    return this.#tokenInFlight;
  }
}
