/**
 * "The SDK and the spec cannot drift": src/generated/protocol.ts must be what
 * the generator makes from protocol/schemas today, and the client's
 * dispatcher must handle every server frame type the schemas define.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { generate, OUTPUT_FILE, SCHEMA_DIR } from "../../scripts/gen-types.mjs";
import { ChatClient, SERVER_FRAME_TYPES, CLIENT_FRAME_TYPES } from "../../src/index.ts";

function schemaFrameTypes(direction: "server" | "client"): string[] {
  return readdirSync(SCHEMA_DIR)
    .filter((f) => f.startsWith(`${direction}.`) && f !== `${direction}.json` && f.endsWith(".json"))
    .map((f) => {
      const schema = JSON.parse(readFileSync(`${SCHEMA_DIR}/${f}`, "utf8")) as {
        properties: { type: { const: string } };
      };
      return schema.properties.type.const;
    })
    .sort();
}

test("src/generated/protocol.ts is up to date with protocol/schemas (run npm run gen:types)", async () => {
  const fresh = await generate();
  const committed = readFileSync(OUTPUT_FILE, "utf8");
  assert.equal(committed, fresh, "src/generated/protocol.ts is stale: run `npm run gen:types`");
});

test("the generated frame lists match the schema files", () => {
  assert.deepEqual([...SERVER_FRAME_TYPES].sort(), schemaFrameTypes("server"));
  assert.deepEqual([...CLIENT_FRAME_TYPES].sort(), schemaFrameTypes("client"));
});

test("the client's dispatcher handles every server frame type of the schemas", () => {
  const client = new ChatClient({ url: "ws://127.0.0.1:1/ws", ticket: () => "t" });
  const handled = new Set(client.handledFrameTypes());
  const missing = schemaFrameTypes("server").filter((t) => !handled.has(t));
  assert.deepEqual(missing, [], `server frame types without a handler: ${missing.join(", ")}`);
  const extra = [...handled].filter((t) => !schemaFrameTypes("server").includes(t));
  assert.deepEqual(extra, [], `handlers for frame types the schemas do not have: ${extra.join(", ")}`);
});

test("server.json lists exactly the per-type server schemas", () => {
  const all = JSON.parse(readFileSync(`${SCHEMA_DIR}/server.json`, "utf8")) as { oneOf: Array<{ $ref: string }> };
  const refs = all.oneOf.map((r) => r.$ref.replace(/^server\.|\.json$/g, "")).sort();
  assert.deepEqual(refs, schemaFrameTypes("server"));
});
