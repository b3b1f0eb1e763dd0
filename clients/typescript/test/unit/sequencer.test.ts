import assert from "node:assert/strict";
import { test } from "node:test";
import { classify } from "../../src/sequencer.ts";

test("dedupe by seq: duplicates, next, gaps", () => {
  assert.equal(classify(undefined, 7), "next", "nothing held: accept");
  assert.equal(classify(5, 3), "duplicate");
  assert.equal(classify(5, 5), "duplicate");
  assert.equal(classify(5, 6), "next");
  assert.equal(classify(5, 8), "gap");
  assert.equal(classify(0, 1), "next");
});

test("a replayed run after a reconnect is processed exactly once", () => {
  let last: number | undefined = 3;
  const processed: number[] = [];
  // Live 4, 5; connection drops; replay from 3 gives 4..7; live 8.
  for (const seq of [4, 5, 4, 5, 6, 7, 8, 8]) {
    if (classify(last, seq) === "next") {
      processed.push(seq);
      last = seq;
    }
  }
  assert.deepEqual(processed, [4, 5, 6, 7, 8]);
});
