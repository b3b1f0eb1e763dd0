import assert from "node:assert/strict";
import { test } from "node:test";
import { IDBFactory } from "fake-indexeddb";
import { IndexedDBStore, LocalStorageStore, MemoryStore, type StorageLike, type Store } from "../../src/index.ts";

/** A tiny localStorage shim (Web Storage semantics the store relies on). */
class MemoryStorage implements StorageLike {
  readonly map = new Map<string, string>();
  getItem(k: string): string | null {
    return this.map.get(k) ?? null;
  }
  setItem(k: string, v: string): void {
    this.map.set(k, String(v));
  }
  removeItem(k: string): void {
    this.map.delete(k);
  }
}

async function contract(store: Store): Promise<void> {
  assert.equal(await store.get("missing"), undefined);
  await store.set("k", "v1");
  assert.equal(await store.get("k"), "v1");
  await store.set("k", "v2");
  assert.equal(await store.get("k"), "v2");
  await store.set("other", JSON.stringify({ a: [1, 2] }));
  await store.delete("k");
  assert.equal(await store.get("k"), undefined);
  assert.equal(await store.get("other"), '{"a":[1,2]}');
  await store.delete("never-set");
}

test("MemoryStore", async () => {
  await contract(new MemoryStore());
});

test("LocalStorageStore uses its prefix", async () => {
  const storage = new MemoryStorage();
  const s = new LocalStorageStore("app1:", storage);
  await contract(s);
  assert.deepEqual([...storage.map.keys()], ["app1:other"]);
  // Another prefix does not see it.
  assert.equal(await new LocalStorageStore("app2:", storage).get("other"), undefined);
  assert.throws(() => new LocalStorageStore("x:"), /no localStorage/);
});

test("IndexedDBStore (fake-indexeddb): values survive a new store on the same database", async () => {
  const factory = new IDBFactory();
  const s = new IndexedDBStore("chatgw-test", factory);
  await contract(s);
  await s.set("persist", "yes");
  await s.close();
  const again = new IndexedDBStore("chatgw-test", factory);
  assert.equal(await again.get("persist"), "yes");
  assert.equal(await again.get("other"), '{"a":[1,2]}');
  await again.close();
});
