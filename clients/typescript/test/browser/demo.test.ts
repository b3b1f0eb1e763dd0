/**
 * The browser demo in real Chromium (Debian's /usr/bin/chromium, driven by
 * playwright-core; no downloaded browser), against the real gateway binary
 * serving the demo with DEMO=1.
 *
 * 1. The committed demo/dist is what `npm run demo:build` produces, byte for
 *    byte (the gateway embeds dist at compile time, so a stale dist would
 *    ship a page that does not match its source).
 * 2. Two users chat through the page; one goes offline (context.setOffline)
 *    while the other sends and while it sends itself (the outbox); after it
 *    comes back both pages show every message exactly once, in order, the
 *    unread counts are right, and there was no console error or CSP violation.
 * 3. A reload resumes without duplicates; an edit and a delete reach the other
 *    page; adding a member by email and leaving; sign-out and sign-in again.
 * 4. With 3 s access tokens the pages renew over the socket and never reconnect.
 *
 * Env: CHATGW_BIN (default: this repository's target/debug, then target/release), CHROMIUM (default
 * /usr/bin/chromium), CHATGW_DEMO_DIR=<dir> to serve the page from <dir>
 * (DEMO_DIR) instead of the copy embedded in the binary, UPDATE_SCREENSHOT=1
 * to copy the chat screenshot to demo/screenshot.png, DEMO_TEST_DEBUG=1 to
 * print every WebSocket frame of the pages.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { CHATGW_BIN, eventually as waitFor } from "../harness.ts";

const PKG = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const DIST = join(PKG, "demo", "dist");
const RESULTS = join(PKG, "test-results");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** Generous: CI machines are small and shared. Tests wait for conditions, never for times. */
const WAIT_MS = 60_000;
const PASSWORD = "correct horse battery";

// ---------------------------------------------------------------------------
// Helpers

/** The harness's `eventually`, with this file's call shape and a slower poll (each check drives a page). */
function eventually<T>(what: string, cond: () => Promise<T | false | undefined | null> | T | false | undefined | null, state?: () => unknown): Promise<T> {
  return waitFor(what, cond, { timeoutMs: WAIT_MS, intervalMs: 100, state });
}

function run(cmd: string, args: string[], cwd: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, out }));
  });
}

/** The gateway binary on its own temp SQLite and a port it picks itself. */
class Gateway {
  private child: ChildProcess | undefined;
  private log = "";
  url = "";

  private readonly dir = mkdtempSync(join(tmpdir(), "chatgw-demo-test-"));

  constructor(private readonly extraEnv: Record<string, string> = {}) {}

  async start(): Promise<void> {
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      APP_ENV: "development",
      DATABASE_URL: `sqlite://${join(this.dir, "chatgw.db")}`,
      LISTEN_ADDR: "127.0.0.1:0",
      DEMO: "1",
      // The app heartbeat (the page cannot see WebSocket pings) every second,
      // so a link cut by setOffline is noticed in seconds.
      WS_HEARTBEAT_MS: "1000",
      WS_IDLE_TIMEOUT_MS: "4000",
      // Registrations and sign-ins of the tests come from one IP.
      LOGIN_ATTEMPTS_PER_MINUTE: "1000",
      RUST_LOG: "warn",
      ...this.extraEnv,
    };
    // The copy embedded in the binary (what `cargo run` serves) unless a
    // directory is named for a development loop.
    if (process.env.CHATGW_DEMO_DIR) env.DEMO_DIR = process.env.CHATGW_DEMO_DIR;
    const child = spawn(CHATGW_BIN, [], { env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    const onData = (d: Buffer): void => {
      this.log += d.toString();
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    this.url = await eventually("the gateway to listen", () => {
      if (child.exitCode !== null) throw new Error(`gateway exited ${child.exitCode}: ${this.log}`);
      return /chatgw listening on (http:\/\/[^\s]+)/.exec(this.log)?.[1];
    });
  }

  output(): string {
    return this.log;
  }

  async stop(): Promise<void> {
    const c = this.child;
    if (c && c.exitCode === null) {
      const exited = new Promise((r) => c.once("exit", r));
      c.kill("SIGKILL");
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Console errors, page errors and CSP violations of one page. */
class Watch {
  readonly errors: string[] = [];
  /** While true, errors about the cut network are expected (the browser logs failed sockets and fetches). */
  offline = false;
  /** Server frames received by the page, by type. */
  readonly received = new Map<string, number>();
  /** WebSocket connections the page opened. */
  sockets = 0;

  constructor(readonly name: string, page: Page) {
    page.on("console", (m) => {
      if (m.type() !== "error" && !/Content Security Policy|Refused to|CSP violation/i.test(m.text())) return;
      const text = m.text();
      if (this.offline && !/Content Security Policy|Refused to|CSP violation/i.test(text) && isNetworkNoise(text)) {
        if (process.env.DEMO_TEST_DEBUG === "1") console.log(`${name} expected while offline: ${text}`);
        return;
      }
      this.errors.push(`${name} console.${m.type()}: ${text}`);
    });
    page.on("pageerror", (e) => this.errors.push(`${name} pageerror: ${e.message}`));
    page.on("websocket", (ws) => {
      this.sockets++;
      ws.on("framereceived", (f) => {
        const type = /"type":"([a-z_]+)"/.exec(String(f.payload))?.[1] ?? "?";
        this.received.set(type, (this.received.get(type) ?? 0) + 1);
      });
    });
    // DEMO_TEST_DEBUG=1: every WebSocket frame of the page, for a failure's story.
    if (process.env.DEMO_TEST_DEBUG === "1") {
      page.on("websocket", (ws) => {
        const log = (dir: string, p: string | Buffer): void => console.log(`[${new Date().toISOString()}] ${name} ${dir} ${String(p)}`);
        log("open", ws.url().replace(/ticket=[^&]+/, "ticket=…"));
        ws.on("framesent", (f) => log(">>", f.payload));
        ws.on("framereceived", (f) => log("<<", f.payload));
        ws.on("close", () => log("close", ""));
      });
    }
  }
}

function isNetworkNoise(text: string): boolean {
  return /WebSocket connection to .* failed|net::ERR_INTERNET_DISCONNECTED|net::ERR_NETWORK_CHANGED|Failed to load resource|Failed to fetch|network unreachable/i.test(text);
}

interface User {
  name: string;
  email: string;
  context: BrowserContext;
  page: Page;
  watch: Watch;
}

async function openUser(browser: Browser, gw: Gateway, name: string): Promise<User> {
  const context = await browser.newContext({ viewport: { width: 1100, height: 860 }, locale: "en-GB", timezoneId: "UTC" });
  // Report CSP violations explicitly (init scripts run outside the page's CSP).
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
    });
  });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const watch = new Watch(name, page);
  await page.goto(`${gw.url}/demo/`);
  const email = `${name.toLowerCase()}-${Date.now().toString(36)}@example.com`;
  return { name, email, context, page, watch };
}

async function register(u: User): Promise<void> {
  const form = u.page.locator('[data-test="auth-form"]');
  await form.locator('input[name="email"]').fill(u.email);
  await form.locator('input[name="password"]').fill(PASSWORD);
  await form.locator('input[name="display_name"]').fill(u.name);
  await form.locator('[data-test="register"]').click();
  await waitOnline(u);
}

async function signIn(u: User): Promise<void> {
  const form = u.page.locator('[data-test="auth-form"]');
  await form.locator('input[name="email"]').fill(u.email);
  await form.locator('input[name="password"]').fill(PASSWORD);
  await form.locator('[data-test="signin"]').click();
  await waitOnline(u);
}

async function connState(u: User): Promise<string | undefined> {
  return (await u.page.locator('[data-test="conn"]').getAttribute("data-state")) ?? undefined;
}

async function clientState(u: User): Promise<string | undefined> {
  return (await u.page.locator('[data-test="conn"]').getAttribute("data-client-state")) ?? undefined;
}

async function waitOnline(u: User): Promise<void> {
  await eventually(`${u.name} online`, async () => (await connState(u)) === "online", () => connState(u));
}

function roomItem(u: User, name: string) {
  return u.page.locator('[data-test="room"]', { has: u.page.locator(".room-name", { hasText: name }) });
}

async function openRoom(u: User, name: string): Promise<void> {
  await roomItem(u, name).click();
  await eventually(`${u.name} sees room ${name} open`, async () => (await u.page.locator('[data-test="room-title"]').textContent()) === name);
}

async function unread(u: User, name: string): Promise<number> {
  return Number(await roomItem(u, name).getAttribute("data-unread"));
}

async function send(u: User, body: string): Promise<void> {
  const box = u.page.locator('[data-test="composer"] textarea');
  await box.fill(body);
  await box.press("Enter");
}

/**
 * Types into `typist`'s composer, a key at a time, until `watcher` shows the
 * typing indicator: the SDK sends at most one typing frame per 2 s per room,
 * so a burst right after an earlier one is (correctly) not sent.
 */
async function typeUntilSeen(typist: User, watcher: User, text: string): Promise<void> {
  const box = typist.page.locator('[data-test="composer"] textarea');
  const seen = async (): Promise<boolean> =>
    new RegExp(`${typist.name} is typing`).test((await watcher.page.locator('[data-test="typing"]').textContent()) ?? "");
  let i = 0;
  await eventually(`${watcher.name} to see ${typist.name} typing`, async () => {
    if (await seen()) return true;
    await box.pressSequentially(text[i++ % text.length] ?? "x");
    await sleep(250);
    return seen();
  });
}

interface Shown {
  seq: number;
  sender: string;
  who: string;
  body: string;
}

/** The confirmed messages of the open room, as the DOM shows them. */
async function shown(u: User): Promise<Shown[]> {
  return u.page.locator('[data-test="messages"] > [data-test="message"]').evaluateAll((els) =>
    els.map((el) => ({
      seq: Number((el as HTMLElement).dataset.seq),
      sender: (el as HTMLElement).dataset.sender ?? "",
      who: el.querySelector(".who")?.textContent ?? "",
      body: el.querySelector(".body")?.textContent ?? "",
    })),
  );
}

async function pendingCount(u: User): Promise<number> {
  return u.page.locator('[data-test="pending"]').count();
}

async function bodies(u: User): Promise<string[]> {
  return (await shown(u)).map((m) => m.body);
}

/** Every expected body exactly once, in seq order, seqs strictly increasing. */
function assertExactlyOnceInOrder(who: string, got: Shown[], expected: string[]): void {
  const seqs = got.map((m) => m.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `${who}: rows in seq order`);
  assert.equal(new Set(seqs).size, seqs.length, `${who}: each seq once`);
  assert.deepEqual(got.map((m) => m.body), expected, `${who}: every message once, in order`);
}

async function screenshot(u: User, name: string): Promise<string> {
  mkdirSync(RESULTS, { recursive: true });
  const path = join(RESULTS, `${name}.png`);
  await u.page.screenshot({ path });
  return path;
}

// ---------------------------------------------------------------------------

test("demo/dist is exactly what `npm run demo:build` produces", async () => {
  const out = mkdtempSync(join(tmpdir(), "chatgw-demo-build-"));
  try {
    const r = await run("npm", ["run", "--silent", "demo:build", "--", "--outDir", out, "--emptyOutDir"], PKG);
    assert.equal(r.code, 0, `demo:build failed:\n${r.out}`);
    const built = readdirSync(out).sort();
    assert.deepEqual(built, ["app.css", "app.js", "index.html"], "the build emits exactly the three files the gateway serves");
    assert.deepEqual(readdirSync(DIST).sort(), built, "demo/dist holds exactly those files");
    for (const f of built) {
      assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(DIST, f))), `demo/dist/${f} is stale: run \`npm run demo:build\` and commit it`);
    }
    const html = readFileSync(join(out, "index.html"), "utf8");
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, "no inline script (the CSP refuses it)");
    assert.doesNotMatch(html, /<style|\sstyle=/i, "no inline style (the CSP refuses it)");
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

describe("chat in Chromium", () => {
  const gw = new Gateway();
  let browser: Browser;
  let alice: User;
  let bob: User;
  const expected: string[] = [];

  before(async () => {
    await gw.start();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    alice = await openUser(browser, gw, "Alice");
    bob = await openUser(browser, gw, "Bob");
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await gw.stop();
  });

  test("the gateway serves the three files of demo/dist under its CSP", async () => {
    const dir = process.env.CHATGW_DEMO_DIR ?? DIST;
    for (const [path, file, type] of [
      ["/demo/", "index.html", "text/html"],
      ["/demo/app.js", "app.js", "javascript"],
      ["/demo/app.css", "app.css", "text/css"],
    ] as const) {
      const res = await fetch(`${gw.url}${path}`);
      assert.equal(res.status, 200, path);
      assert.match(res.headers.get("content-type") ?? "", new RegExp(type), `${path} content type`);
      assert.match(res.headers.get("content-security-policy") ?? "", /script-src 'self'/, `${path} CSP`);
      const served = Buffer.from(await res.arrayBuffer());
      assert.ok(
        served.equals(readFileSync(join(dir, file))),
        `${path} differs from ${join(dir, file)}: the binary embeds another build of the demo (rebuild it, or set CHATGW_DEMO_DIR)`,
      );
    }
  });

  test("two users chat; one goes offline and back; every message once, in order", async () => {
    await register(alice);
    await register(bob);

    // Alice creates two rooms with Bob: one they talk in, one Bob leaves unread.
    const create = alice.page.locator('[data-test="create-room"]');
    await create.locator('input[name="name"]').fill("Side");
    await create.locator('input[name="members"]').fill(bob.email);
    await create.locator("button").click();
    await roomItem(alice, "Side").waitFor();
    await create.locator('input[name="name"]').fill("Trip");
    await create.locator('input[name="members"]').fill(bob.email);
    await create.locator("button").click();
    await openRoom(alice, "Trip");
    await eventually("Bob to see both rooms", async () => (await roomItem(bob, "Trip").count()) === 1 && (await roomItem(bob, "Side").count()) === 1);
    await openRoom(bob, "Trip");

    // Presence: each sees the other online in the room.
    await eventually("Alice to see Bob online", async () => /Bob/.test((await alice.page.locator('[data-test="online"]').textContent()) ?? ""));
    await eventually("Bob to see Alice online", async () => /Alice/.test((await bob.page.locator('[data-test="online"]').textContent()) ?? ""));

    // Typing indicator.
    await typeUntilSeen(alice, bob, "hel");

    await send(alice, "hello Bob");
    expected.push("hello Bob");
    await eventually("Bob to get the first message", async () => (await bodies(bob)).includes("hello Bob"));
    await send(bob, "hi Alice");
    expected.push("hi Alice");
    await eventually("Alice to get the reply", async () => (await bodies(alice)).includes("hi Alice"));
    const first = await shown(bob);
    assert.deepEqual(first.map((m) => m.who), ["Alice", "Bob"], "sender names shown");

    // Bob's network goes away; the app heartbeat notices.
    bob.watch.offline = true;
    await bob.context.setOffline(true);
    await eventually("Bob's badge to leave online", async () => ["reconnecting", "offline"].includes((await connState(bob)) ?? ""), () => connState(bob));
    // The SDK itself notices (app heartbeat: no server ping for 2 x 1 s + margin),
    // not only the browser's navigator.onLine.
    await eventually("Bob's client to notice the dead link", async () => (await clientState(bob)) === "reconnecting", () => clientState(bob));

    const N = 6;
    for (let i = 1; i <= N; i++) {
      await send(alice, `alice offline-${i}`);
      expected.push(`alice offline-${i}`);
    }
    await eventually("Alice's sends acked and shown", async () => (await pendingCount(alice)) === 0 && (await bodies(alice)).length === expected.length, async () => bodies(alice));

    // Bob sends while offline: kept in the outbox, shown as pending.
    const M = 3;
    for (let i = 1; i <= M; i++) await send(bob, `bob offline-${i}`);
    await eventually("Bob's offline sends pending", async () => (await pendingCount(bob)) === M);
    assert.ok(["reconnecting", "offline"].includes((await connState(bob)) ?? ""), "Bob still not online");
    await screenshot(bob, "bob-offline");

    // Meanwhile in the other room, two messages Bob will not open yet.
    await openRoom(alice, "Side");
    await send(alice, "side 1");
    await send(alice, "side 2");
    await eventually("Alice's side messages shown", async () => (await bodies(alice)).length === 2 && (await pendingCount(alice)) === 0);
    await openRoom(alice, "Trip");

    // Back online: Bob resumes, receives what he missed, his outbox goes out.
    await bob.context.setOffline(false);
    await waitOnline(bob);
    for (let i = 1; i <= M; i++) expected.push(`bob offline-${i}`);
    await eventually("Bob's page to show every message", async () => (await bodies(bob)).length >= expected.length && (await pendingCount(bob)) === 0, async () => bodies(bob));
    await eventually("Alice's page to show every message", async () => (await bodies(alice)).length >= expected.length, async () => bodies(alice));
    bob.watch.offline = false;

    const a = await shown(alice);
    const b = await shown(bob);
    assertExactlyOnceInOrder("Alice", a, expected);
    assertExactlyOnceInOrder("Bob", b, expected);
    assert.deepEqual(a.map((m) => m.seq), b.map((m) => m.seq), "both pages show the same seqs");
    assert.equal(b[0]?.seq, 1, "from the first message");
    assert.equal(b.at(-1)?.seq, expected.length, "gap-free: last seq = message count");

    // Unread: Trip is open on both pages (read), Side has Alice's two for Bob.
    await eventually("Bob's unread counts", async () => (await unread(bob, "Trip")) === 0 && (await unread(bob, "Side")) === 2, async () => [await unread(bob, "Trip"), await unread(bob, "Side")]);
    await eventually("Alice's unread counts", async () => (await unread(alice, "Trip")) === 0 && (await unread(alice, "Side")) === 0, async () => [await unread(alice, "Trip"), await unread(alice, "Side")]);

    // A settled page for the README.
    await typeUntilSeen(alice, bob, "see you");
    const shot = await screenshot(bob, "bob-chat");
    await screenshot(alice, "alice-chat");
    if (process.env.UPDATE_SCREENSHOT === "1") copyFileSync(shot, join(PKG, "demo", "screenshot.png"));
    await alice.page.locator('[data-test="composer"] textarea').fill("");

    // Opening Side shows Alice's two messages and clears the badge.
    await openRoom(bob, "Side");
    await eventually("Bob sees the side messages", async () => JSON.stringify(await bodies(bob)) === JSON.stringify(["side 1", "side 2"]), async () => bodies(bob));
    await eventually("Bob's Side badge to clear", async () => (await unread(bob, "Side")) === 0);
    await openRoom(bob, "Trip");

    assert.deepEqual([...alice.watch.errors, ...bob.watch.errors], [], "no console errors or CSP violations");
  });

  test("reload resumes without duplicates; edit and delete; sign out and in", async () => {
    // Alice sends while Bob's page reloads: the resume delivers it, once.
    const reload = bob.page.reload();
    await send(alice, "during reload");
    expected.push("during reload");
    await reload;
    await waitOnline(bob);
    await eventually("Bob to reopen Trip after the reload", async () => (await bob.page.locator('[data-test="room-title"]').textContent()) === "Trip");
    await eventually("Bob's page after reload", async () => (await bodies(bob)).length >= expected.length, async () => bodies(bob));
    assertExactlyOnceInOrder("Bob after reload", await shown(bob), expected);

    // Alice edits and deletes her own messages; Bob's page follows.
    const rows = alice.page.locator('[data-test="messages"] > [data-test="message"]');
    const firstRow = rows.filter({ hasText: "hello Bob" });
    await firstRow.hover();
    await firstRow.locator('[data-test="edit"]').click();
    const field = alice.page.locator('[data-test="edit-field"]');
    await field.fill("hello Bob (edited)");
    await field.press("Enter");
    const doomed = rows.filter({ hasText: "alice offline-1" });
    await doomed.hover();
    await doomed.locator('[data-test="delete"]').click();
    await eventually("Bob to see the edit and the delete", async () => {
      const b = await bodies(bob);
      return b[0] === "hello Bob (edited)" && b[2] === "message deleted";
    }, async () => bodies(bob));
    expected[0] = "hello Bob (edited)";
    expected[2] = "message deleted";
    assertExactlyOnceInOrder("Bob after edit", await shown(bob), expected);
    assertExactlyOnceInOrder("Alice after edit", await shown(alice), expected);

    // A room created alone, then Bob added by email: it appears in his list.
    const create = alice.page.locator('[data-test="create-room"]');
    await create.locator('input[name="name"]').fill("Later");
    await create.locator("button").click();
    await eventually("Alice in room Later", async () => (await alice.page.locator('[data-test="room-title"]').textContent()) === "Later");
    const add = alice.page.locator('[data-test="add-member"]');
    await add.locator('input[name="email"]').fill(bob.email);
    await add.locator("button").click();
    await roomItem(bob, "Later").waitFor();
    await openRoom(alice, "Trip");

    // Bob leaves it again: gone from his list (and from his client's resume set).
    await openRoom(bob, "Later");
    await bob.page.locator('[data-test="leave"]').click();
    await eventually("Later to leave Bob's list", async () => (await roomItem(bob, "Later").count()) === 0);
    await openRoom(bob, "Trip");

    // Sign out, then in again: the rooms and history are back.
    await bob.page.locator('[data-test="signout"]').click();
    await bob.page.locator('[data-test="auth-form"]').waitFor();
    assert.equal(await connState(bob), "signed-out");
    await signIn(bob);
    await eventually("Bob's rooms after sign-in", async () => (await roomItem(bob, "Trip").count()) === 1 && (await roomItem(bob, "Side").count()) === 1);
    assert.equal(await roomItem(bob, "Later").count(), 0, "the room Bob left stays gone");
    await openRoom(bob, "Trip");
    await eventually("Bob's history after sign-in", async () => (await bodies(bob)).length >= expected.length, async () => bodies(bob));
    assertExactlyOnceInOrder("Bob after sign-in", await shown(bob), expected);
    await send(bob, "back again");
    expected.push("back again");
    await eventually("Alice gets Bob's message after his sign-in", async () => (await bodies(alice)).at(-1) === "back again");
    assertExactlyOnceInOrder("Alice at the end", await shown(alice), expected);

    assert.deepEqual([...alice.watch.errors, ...bob.watch.errors], [], "no console errors or CSP violations");
  });
});

describe("short-lived access tokens in the browser", () => {
  // 3 s tokens: the SDK renews over the socket (`auth`) with the page's token
  // provider, which refreshes over REST; the chat goes on without reconnecting.
  const gw = new Gateway({ ACCESS_TOKEN_TTL_SECS: "3" });
  let browser: Browser;

  before(async () => {
    await gw.start();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await gw.stop();
  });

  test("the session renews itself and the chat keeps working", async () => {
    const alice = await openUser(browser, gw, "Alice");
    const bob = await openUser(browser, gw, "Bob");
    await register(alice);
    await register(bob);
    const create = alice.page.locator('[data-test="create-room"]');
    await create.locator('input[name="name"]').fill("Short");
    await create.locator('input[name="members"]').fill(bob.email);
    await create.locator("button").click();
    await openRoom(alice, "Short");
    await roomItem(bob, "Short").waitFor();
    await openRoom(bob, "Short");
    await send(alice, "before renewals");

    for (const u of [alice, bob]) {
      await eventually(`${u.name}'s socket renewed three times`, () => (u.watch.received.get("auth_ok") ?? 0) >= 3, () => Object.fromEntries(u.watch.received));
    }
    await send(bob, "after renewals");
    await eventually("both pages show both messages", async () =>
      JSON.stringify(await bodies(alice)) === JSON.stringify(["before renewals", "after renewals"]) &&
      JSON.stringify(await bodies(bob)) === JSON.stringify(["before renewals", "after renewals"]),
    );
    assert.equal(alice.watch.sockets, 1, "Alice never reconnected");
    assert.equal(bob.watch.sockets, 1, "Bob never reconnected");

    // A reload long after the first access token expired signs in again from the refresh token.
    await bob.page.reload();
    await waitOnline(bob);
    await eventually("Bob's history after the reload", async () => JSON.stringify(await bodies(bob)) === JSON.stringify(["before renewals", "after renewals"]), async () => bodies(bob));
    assert.deepEqual([...alice.watch.errors, ...bob.watch.errors], [], "no console errors or CSP violations");
  });
});
