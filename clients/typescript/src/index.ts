/**
 * @chatgw/client: TypeScript client for the chatgw gateway (protocol 1.x: 1.0 to 1.2).
 * See README.md for the reference.
 */
export { ChatClient } from "./client.js";
export type {
  ChatClientOptions,
  ClientEvents,
  ClientState,
  CredentialProvider,
  HeartbeatMode,
  LogLevel,
  PendingSend,
  StateInfo,
  GapInfo,
} from "./client.js";
export { Room } from "./room.js";
export type { RemovedReason, RoomEvents, RoomSnapshot } from "./room.js";
export { ChatError } from "./errors.js";
export type { ChatErrorCode } from "./errors.js";
export { MemoryStore, LocalStorageStore, IndexedDBStore } from "./store.js";
export type { Store, StorageLike } from "./store.js";
export { Emitter } from "./emitter.js";
export type { Listener } from "./emitter.js";
export { Backoff, fullJitter, parseDrainDelay } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export type { OutboxEntry, OutboxKind } from "./outbox.js";
export type { SocketLike, WebSocketConstructor } from "./transport.js";
export * from "./generated/protocol.js";
