/**
 * scripts/test-summary.sh, the closing line of scripts/test.sh: totals over
 * cargo, the SDK's unit+e2e run and the browser run, and a failure naming
 * the group when one failed or ran no test (its output lacks the counts of
 * the reporter pinned in package.json, or they are zero).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

const SCRIPT = fileURLToPath(new URL("../../../../scripts/test-summary.sh", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "chatgw-summary-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const CARGO = [
  "running 12 tests",
  "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s",
  "running 300 tests",
  "test result: ok. 298 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 90.00s",
].join("\n");
const tap = (pass: number, fail: number) =>
  ["TAP version 13", "ok 1 - something", `# tests ${pass + fail}`, `# pass ${pass}`, `# fail ${fail}`, "# todo 0"].join("\n");

function run(files: { cargo?: string; sdk?: string; browser?: string }): { code: number | null; line: string } {
  const paths = (["cargo", "sdk", "browser"] as const).map((k) => {
    const p = join(dir, `${k}-${Math.random().toString(16).slice(2)}`);
    if (files[k] !== undefined) writeFileSync(p, files[k]!);
    return p;
  });
  const r = spawnSync("bash", [SCRIPT, ...paths], { encoding: "utf8" });
  return { code: r.status, line: r.stdout.trim() };
}

test("test-summary: totals of the three groups, exit 0 when all ran and passed", () => {
  const r = run({ cargo: CARGO, sdk: tap(80, 0), browser: tap(1, 0) });
  assert.equal(r.code, 0, r.line);
  assert.equal(r.line, "summary: 391 passed, 0 failed (passed/failed: cargo 310/0, sdk unit+e2e 80/0, browser 1/0)");
});

test("test-summary: fails and names the group when one ran no test or has no counts", () => {
  const noBrowser = run({ cargo: CARGO, sdk: tap(80, 0), browser: "npm ERR! build failed\n" });
  assert.equal(noBrowser.code, 1, noBrowser.line);
  assert.match(noBrowser.line, /FAILED: browser: no test counts in its output/);
  const missing = run({ cargo: CARGO, browser: tap(1, 0) });
  assert.equal(missing.code, 1, missing.line);
  assert.match(missing.line, /FAILED: sdk unit\+e2e: no test counts/);
  const empty = run({ cargo: CARGO, sdk: tap(0, 0), browser: tap(1, 0) });
  assert.equal(empty.code, 1, empty.line);
  assert.match(empty.line, /FAILED: sdk unit\+e2e: ran no test/);
  const noCargo = run({ cargo: "error: could not compile `chatgw`\n", sdk: tap(80, 0), browser: tap(1, 0) });
  assert.equal(noCargo.code, 1, noCargo.line);
  assert.match(noCargo.line, /FAILED: cargo: no test counts/);
  // The old reporter-dependent case: spec output has no "# pass" lines.
  const spec = run({ cargo: CARGO, sdk: "✔ something (1ms)\nℹ pass 80\nℹ fail 0\n", browser: tap(1, 0) });
  assert.equal(spec.code, 1, spec.line);
});

test("test-summary: fails when a group had failures, or tests cancelled by a failed hook", () => {
  const r = run({ cargo: CARGO, sdk: tap(79, 1), browser: tap(1, 0) });
  assert.equal(r.code, 1, r.line);
  assert.match(r.line, /^summary: 390 passed, 1 failed .* FAILED: sdk unit\+e2e: 1 failed$/);
  // What node:test printed when Chromium would not launch: the suites' tests cancelled, "# fail 0".
  const cancelled = run({ cargo: CARGO, sdk: tap(80, 0), browser: `${tap(1, 0)}\n# cancelled 4\n` });
  assert.equal(cancelled.code, 1, cancelled.line);
  assert.match(cancelled.line, /FAILED: browser: 4 failed$/);
});
