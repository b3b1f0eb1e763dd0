/**
 * Pluggable persistence. The SDK only needs a small async key-value store:
 * everything it keeps (per-room lastSeq/epoch/readSeq and the outbox) is one
 * JSON document per user, so any platform storage (localStorage, IndexedDB,
 * AsyncStorage on React Native, a file on Node) fits behind three methods.
 */
export interface Store {
  get(key: string): Promise<string | undefined>;
  set(key: string, value: string): Promise<void>;
  delete(key: string): Promise<void>;
}

/** In-memory store: survives a ChatClient but not the process (the default). */
export class MemoryStore implements Store {
  readonly #map = new Map<string, string>();
  async get(key: string): Promise<string | undefined> {
    return this.#map.get(key);
  }
  async set(key: string, value: string): Promise<void> {
    this.#map.set(key, value);
  }
  async delete(key: string): Promise<void> {
    this.#map.delete(key);
  }
}

/** The part of the Web Storage API the SDK uses (so tests can pass a shim). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Browser localStorage (synchronous underneath; fine for the SDK's small documents). */
export class LocalStorageStore implements Store {
  readonly #storage: StorageLike;
  constructor(
    readonly prefix = "chatgw:",
    storage?: StorageLike,
  ) {
    const s = storage ?? (typeof localStorage !== "undefined" ? localStorage : undefined);
    if (!s) throw new Error("LocalStorageStore: no localStorage on this platform; pass one");
    this.#storage = s;
  }
  async get(key: string): Promise<string | undefined> {
    return this.#storage.getItem(this.prefix + key) ?? undefined;
  }
  async set(key: string, value: string): Promise<void> {
    this.#storage.setItem(this.prefix + key, value);
  }
  async delete(key: string): Promise<void> {
    this.#storage.removeItem(this.prefix + key);
  }
}

/**
 * IndexedDB, one object store "kv" in database `dbName`. Preferred in
 * browsers over localStorage: asynchronous, larger quota, and available to
 * service workers.
 */
export class IndexedDBStore implements Store {
  static readonly STORE = "kv";
  #db: Promise<IDBDatabase> | undefined;
  readonly #factory: IDBFactory;

  constructor(
    readonly dbName = "chatgw",
    factory?: IDBFactory,
  ) {
    const f = factory ?? (typeof indexedDB !== "undefined" ? indexedDB : undefined);
    if (!f) throw new Error("IndexedDBStore: no indexedDB on this platform; pass a factory");
    this.#factory = f;
  }

  #open(): Promise<IDBDatabase> {
    if (!this.#db) {
      this.#db = new Promise<IDBDatabase>((resolve, reject) => {
        const req = this.#factory.open(this.dbName, 1);
        req.onupgradeneeded = () => {
          if (!req.result.objectStoreNames.contains(IndexedDBStore.STORE)) {
            req.result.createObjectStore(IndexedDBStore.STORE);
          }
        };
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error ?? new Error("indexedDB open failed"));
        req.onblocked = () => reject(new Error("indexedDB open blocked"));
      });
      // A failed open must not stick forever: the next call retries.
      this.#db.catch(() => {
        this.#db = undefined;
      });
    }
    return this.#db;
  }

  async #run<T>(mode: IDBTransactionMode, op: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
    const db = await this.#open();
    return new Promise<T>((resolve, reject) => {
      const tx = db.transaction(IndexedDBStore.STORE, mode);
      const req = op(tx.objectStore(IndexedDBStore.STORE));
      let result: T;
      req.onsuccess = () => {
        result = req.result;
      };
      // Resolve on commit, not on request success: a write is durable only then.
      tx.oncomplete = () => resolve(result);
      tx.onerror = () => reject(tx.error ?? req.error ?? new Error("indexedDB transaction failed"));
      tx.onabort = () => reject(tx.error ?? new Error("indexedDB transaction aborted"));
    });
  }

  async get(key: string): Promise<string | undefined> {
    const v = await this.#run<unknown>("readonly", (s) => s.get(key));
    return typeof v === "string" ? v : undefined;
  }
  async set(key: string, value: string): Promise<void> {
    await this.#run("readwrite", (s) => s.put(value, key));
  }
  async delete(key: string): Promise<void> {
    await this.#run("readwrite", (s) => s.delete(key));
  }

  /** Closes the database connection (tests; a page that is going away). */
  async close(): Promise<void> {
    if (this.#db) (await this.#db).close();
    this.#db = undefined;
  }
}
