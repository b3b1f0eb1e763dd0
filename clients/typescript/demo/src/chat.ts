/**
 * The demo's model: the SDK client, the rooms with the messages on screen,
 * and user names. Views subscribe to its events and read its state; they
 * never talk to the SDK or the REST API themselves.
 *
 * What comes from where:
 * - the SDK resumes every joined room after each reconnect and delivers each
 *   stored message exactly once, in order (its store keeps lastSeq per room
 *   and the outbox, so a reload resumes too);
 * - messages from before this page load (the SDK only delivers what is newer
 *   than its stored lastSeq) come from REST history, merged by seq;
 * - the room list comes from REST after every `hello` (membership changes
 *   made while disconnected are not replayed) plus the per-user stream.
 */
import {
  ChatClient,
  ChatError,
  IndexedDBStore,
  LocalStorageStore,
  type ClientState,
  type Store,
  type ServerDelete,
  type ServerEdit,
  type ServerMessage,
  type ServerPresence,
  type ServerRead,
  type ServerRoomAdded,
  type ServerRoomRemoved,
  type ServerRoomSeq,
  type ServerRoomUpdated,
  type ServerTyping,
} from "@chatgw/client";
import { Api, type HistoryEntry, type RoomInfo } from "./api.ts";
import { Emitter } from "./events.ts";
import { HttpError } from "./http.ts";
import { RoomModel, TYPING_SHOW_MS, type MessageView, type PendingChange, type SdkRoom } from "./room.ts";
import type { Session } from "./session.ts";

export { RoomModel, type MessageView, type SdkRoom } from "./room.ts";

export type ConnView = "connecting" | "online" | "reconnecting" | "offline";

type ChatEvents = {
  /** The room list changed (added, removed, renamed, unread). */
  rooms: [];
  /** Something in one room changed: messages (the seqs), typing, presence. */
  room: [roomId: string, changedSeqs: number[]];
  state: [ConnView];
  outbox: [];
  names: [];
  notice: [text: string];
  /** The credential was refused for good: the page must sign in again. */
  signedOut: [];
};

/** Sends of the outbox shown as pending in a room. */
export interface PendingSend {
  clientMsgId: string;
  body: string;
}

const ROOMS_CACHE = "chatgw-demo:rooms:";

export class Chat extends Emitter<ChatEvents> {
  readonly rooms = new Map<string, RoomModel>();
  readonly client: ChatClient;
  private readonly names = new Map<string, string>();
  private readonly nameRequests = new Set<string>();
  private readonly readTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private typingTimer: ReturnType<typeof setTimeout> | undefined;
  private visibleRoom: string | undefined;
  private stopped = false;
  private readonly cleanups: Array<() => void> = [];

  constructor(
    private readonly session: Session,
    private readonly api: Api = new Api(session),
  ) {
    super();
    const wsScheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.client = new ChatClient({
      url: `${wsScheme}//${location.host}/ws`,
      // A browser cannot set headers on the handshake: a fresh single-use
      // ticket per attempt; renewals over the socket use the access token.
      ticket: () => this.ticket(),
      token: () => this.session.renewedAccessToken(),
      heartbeat: "auto",
      store: pickStore(session.user.id),
      // A demo wants a quick return after the network comes back.
      backoff: { baseMs: 300, maxMs: 4000 },
    });
    this.names.set(session.user.id, session.user.display_name);
  }

  get me(): string {
    return this.session.user.id;
  }

  get connView(): ConnView {
    const s: ClientState = this.client.state;
    if (s === "online") return "online";
    if (!navigator.onLine) return "offline";
    if (s === "reconnecting") return "reconnecting";
    if (s === "connecting") return "connecting";
    return "offline";
  }

  /** Restores the SDK's rooms and outbox, shows the cached room list, then connects. */
  async start(): Promise<void> {
    this.loadRoomCache();
    const c = this.client;
    c.on("state", (s: ClientState) => {
      this.emit("state", this.connView);
      if (s === "online" && this.visibleRoom) this.scheduleRead(this.visibleRoom);
    });
    c.on("outbox", () => this.emit("outbox"));
    c.on("hello", () => void this.syncRooms());
    c.on("room_added", (f: ServerRoomAdded) => this.onRoomAdded(f));
    c.on("room_removed", (f: ServerRoomRemoved) => this.forget(f.room, f.reason));
    c.on("room_updated", (f: ServerRoomUpdated) => this.onRoomUpdated(f));
    c.on("room_seq", (f: ServerRoomSeq) => this.onRoomSeq(f));
    c.on("error", (e: ChatError) => {
      if (e.code !== "rate_limited") this.emit("notice", `${e.code}: ${e.message}`);
    });
    const onNet = (): void => this.emit("state", this.connView);
    addEventListener("online", onNet);
    addEventListener("offline", onNet);
    this.cleanups.push(() => removeEventListener("online", onNet), () => removeEventListener("offline", onNet));
    const onVisible = (): void => {
      if (this.visibleRoom) this.scheduleRead(this.visibleRoom);
    };
    document.addEventListener("visibilitychange", onVisible);
    this.cleanups.push(() => document.removeEventListener("visibilitychange", onVisible));

    // Listeners on the restored rooms before connecting: the resume replays
    // what arrived while this page was closed as "message" events.
    await c.restore();
    for (const room of c.rooms) this.attach(room);
    this.emit("rooms");
    this.emit("outbox");
    c.connect().catch((e: unknown) => {
      if (this.stopped) return;
      if (e instanceof ChatError && ["unauthorized", "forbidden", "token_expired"].includes(e.code)) {
        this.emit("signedOut");
      } else {
        this.emit("notice", `connect: ${describe(e)}`);
      }
    });
  }

  stop(): void {
    this.stopped = true;
    this.client.close();
    for (const off of this.cleanups) off();
    for (const t of this.readTimers.values()) clearTimeout(t);
    clearTimeout(this.typingTimer);
    for (const m of this.rooms.values()) for (const off of m.unsubscribe) off();
    this.clear();
  }

  private async ticket(): Promise<string> {
    try {
      return await this.api.wsTicket();
    } catch (e) {
      if (e instanceof HttpError && e.status === 401 && !this.stopped) this.emit("signedOut");
      throw e;
    }
  }

  // ---- room list -------------------------------------------------------

  /** By name: a list that reorders itself as messages arrive is hard to click. */
  roomList(): RoomModel[] {
    return [...this.rooms.values()].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
  }

  private model(id: string): RoomModel {
    let m = this.rooms.get(id);
    if (!m) this.rooms.set(id, (m = new RoomModel(id)));
    return m;
  }

  /** After every hello: the current membership from REST, then join what is not joined. */
  private async syncRooms(): Promise<void> {
    let list: RoomInfo[];
    try {
      list = await this.api.rooms();
    } catch (e) {
      this.emit("notice", `room list: ${describe(e)}`);
      return;
    }
    if (this.stopped) return;
    const ids = new Set(list.map((r) => r.id));
    for (const r of list) {
      const m = this.model(r.id);
      m.name = r.name;
      m.role = r.role;
      m.lastSeq = Math.max(m.lastSeq, r.last_seq);
      m.readSeq = Math.max(m.readSeq, r.read_seq);
    }
    // Removed while this page was away: the SDK's resume gets `forbidden`
    // for it and forgets it; the list forgets it now.
    for (const id of [...this.rooms.keys()]) if (!ids.has(id)) this.forget(id, undefined, true);
    this.saveRoomCache();
    this.emit("rooms");
    await Promise.all(list.map((r) => this.ensureJoined(r.id)));
  }

  private async ensureJoined(id: string): Promise<void> {
    const m = this.rooms.get(id);
    if (!m) return;
    if (!m.sdk) {
      try {
        // From the live edge: older messages come from REST history (loadHistory), paged.
        this.attach(await this.client.join(id, { sinceSeq: null }));
      } catch (e) {
        this.emit("notice", `join ${m.name || id}: ${describe(e)}`);
        return;
      }
    }
    if (!m.historyLoaded) await this.loadHistory(m);
  }

  private onRoomAdded(f: ServerRoomAdded): void {
    const m = this.model(f.room);
    m.name = f.name;
    m.role = f.role;
    m.lastSeq = Math.max(m.lastSeq, f.last_seq);
    this.saveRoomCache();
    this.emit("rooms");
    void this.ensureJoined(f.room);
  }

  private onRoomUpdated(f: ServerRoomUpdated): void {
    const m = this.rooms.get(f.room);
    if (!m) return;
    m.name = f.name;
    this.saveRoomCache();
    this.emit("rooms");
  }

  private onRoomSeq(f: ServerRoomSeq): void {
    const m = this.rooms.get(f.room);
    if (!m) return;
    m.lastSeq = Math.max(m.lastSeq, f.last_seq);
    this.emit("rooms");
  }

  private forget(id: string, reason?: string, quiet = false): void {
    const m = this.rooms.get(id);
    if (!m) return;
    for (const off of m.unsubscribe) off();
    this.rooms.delete(id);
    if (this.visibleRoom === id) this.visibleRoom = undefined;
    this.saveRoomCache();
    if (!quiet && reason && reason !== "left") {
      this.emit("notice", `${m.name || "a room"}: ${reason === "room_deleted" ? "deleted" : "you were removed"}`);
    }
    this.emit("rooms");
    this.emit("room", id, []);
  }

  // ---- one room --------------------------------------------------------

  /** Subscribes to an SDK room once. */
  private attach(room: SdkRoom): void {
    const m = this.model(room.id);
    if (m.sdk === room) return;
    for (const off of m.unsubscribe) off();
    m.sdk = room;
    const changed = (seqs: number[] = []): void => {
      this.emit("room", room.id, seqs);
      this.emit("rooms");
      if (seqs.length) this.scheduleRead(room.id);
    };
    m.unsubscribe = [
      room.on("message", (f: ServerMessage) => {
        this.addMessage(m, {
          seq: f.seq,
          sender: f.sender,
          body: f.body,
          sentAt: f.sent_at,
          clientMsgId: f.client_msg_id,
          editedAt: f.edited_at,
          deleted: f.deleted === true,
        });
        m.typing.delete(f.sender);
        this.wantName(f.sender);
        changed([f.seq]);
      }),
      room.on("edit", (f: ServerEdit) => changed(this.applyChange(m, f.target_seq, { kind: "edit", body: f.body, at: f.sent_at }))),
      room.on("delete", (f: ServerDelete) => changed(this.applyChange(m, f.target_seq, { kind: "delete", body: "", at: f.sent_at }))),
      room.on("typing", (f: ServerTyping) => {
        if (f.user === this.me) return;
        m.typing.set(f.user, Date.now() + TYPING_SHOW_MS);
        this.wantName(f.user);
        this.emit("room", room.id, []);
        this.scheduleTypingExpiry();
      }),
      room.on("presence", (f: ServerPresence) => {
        this.wantName(f.user);
        this.emit("room", room.id, []);
      }),
      room.on("read", (_f: ServerRead) => changed()),
      room.on("reset", (r) => {
        // history_gone (§17.1): older seqs will never come; what is on screen stays.
        if (r.type !== "reset") return;
        // A new epoch (§17.2): the server's history was replaced; drop ours and reload.
        m.messages.clear();
        m.pendingChanges.clear();
        m.historyLoaded = false;
        changed();
        void this.loadHistory(m);
      }),
      room.on("removed", (info: { reason: string }) => this.forget(room.id, info.reason)),
    ];
    for (const u of room.online) this.wantName(u);
    this.emit("rooms");
  }

  /** Inserts a message unless that seq is on screen already (REST and the socket overlap). */
  private addMessage(m: RoomModel, msg: MessageView): void {
    if (m.messages.has(msg.seq)) return;
    const change = m.pendingChanges.get(msg.seq);
    if (change && change.at >= (msg.editedAt ?? msg.sentAt)) {
      if (change.kind === "delete") {
        msg.deleted = true;
        msg.body = "";
      } else if (!msg.deleted) {
        msg.body = change.body;
        msg.editedAt = change.at;
      }
    }
    m.pendingChanges.delete(msg.seq);
    m.messages.set(msg.seq, msg);
  }

  private applyChange(m: RoomModel, target: number, change: PendingChange): number[] {
    const msg = m.messages.get(target);
    if (!msg) {
      m.pendingChanges.set(target, change);
      return [];
    }
    if (change.kind === "delete") {
      msg.deleted = true;
      msg.body = "";
    } else if (!msg.deleted) {
      msg.body = change.body;
      msg.editedAt = change.at;
    }
    return [target];
  }

  /** The messages up to what the SDK has seen, from REST (the SDK delivers only newer ones). */
  private async loadHistory(m: RoomModel): Promise<void> {
    const upTo = m.sdk?.lastSeq ?? m.lastSeq;
    if (upTo <= 0) {
      m.historyLoaded = true;
      return;
    }
    let entries: HistoryEntry[];
    try {
      entries = await this.api.history(m.id, upTo);
    } catch (e) {
      this.emit("notice", `history of ${m.name || m.id}: ${describe(e)}`);
      return;
    }
    if (this.rooms.get(m.id) !== m) return;
    m.historyLoaded = true;
    const seqs: number[] = [];
    for (const e of entries) {
      if (e.type !== "message") continue; // change events: the messages show their effect already
      this.addMessage(m, {
        seq: e.seq,
        sender: e.sender,
        body: e.body,
        sentAt: e.sent_at,
        clientMsgId: e.client_msg_id,
        editedAt: e.edited_at,
        deleted: e.deleted === true,
      });
      this.wantName(e.sender);
      seqs.push(e.seq);
    }
    this.emit("room", m.id, seqs);
    this.scheduleRead(m.id);
  }

  /** Sends through the outbox: works offline, delivered once after reconnect. */
  send(roomId: string, body: string): void {
    const room = this.rooms.get(roomId)?.sdk;
    if (!room) {
      this.emit("notice", "this room is not joined yet; try again in a moment");
      return;
    }
    room.send(body).catch((e: unknown) => this.emit("notice", `send: ${describe(e)}`));
    this.emit("outbox");
  }

  edit(roomId: string, seq: number, body: string): void {
    this.rooms.get(roomId)?.sdk?.edit(seq, body).catch((e: unknown) => this.emit("notice", `edit: ${describe(e)}`));
  }

  remove(roomId: string, seq: number): void {
    this.rooms.get(roomId)?.sdk?.delete(seq).catch((e: unknown) => this.emit("notice", `delete: ${describe(e)}`));
  }

  typing(roomId: string): void {
    if (this.client.state !== "online") return;
    this.rooms.get(roomId)?.sdk?.typing();
  }

  /** The outbox's sends of one room whose message is not on screen yet. */
  pending(roomId: string): PendingSend[] {
    const m = this.rooms.get(roomId);
    const shown = new Set([...(m?.messages.values() ?? [])].map((x) => x.clientMsgId));
    return this.client.outbox
      .filter((o) => o.room === roomId && o.kind === "send" && !shown.has(o.clientMsgId))
      .map((o) => ({ clientMsgId: o.clientMsgId, body: o.body ?? "" }));
  }

  async createRoom(name: string, memberEmails: string[]): Promise<string> {
    const r = await this.api.createRoom(name, memberEmails);
    // room_added usually arrives first; the REST answer covers a socket that is down.
    this.onRoomAdded({ type: "room_added", room: r.id, name: r.name, role: "owner", last_seq: r.last_seq });
    return r.id;
  }

  async addMember(roomId: string, email: string): Promise<void> {
    await this.api.addMember(roomId, email);
  }

  async leave(roomId: string): Promise<void> {
    await this.api.leave(roomId, this.me);
  }

  // ---- read markers ----------------------------------------------------

  /** The room on screen (undefined: none). Its messages count as read while the page is visible. */
  setVisibleRoom(id: string | undefined): void {
    this.visibleRoom = id;
    if (id) {
      const m = this.rooms.get(id);
      if (m && !m.historyLoaded && m.sdk) void this.loadHistory(m);
      this.scheduleRead(id);
    }
  }

  /**
   * Marks what the user has seen as read. "Seen" is fixed when the messages
   * arrive in the visible room, so switching rooms right after does not lose
   * it; the server call is coalesced per room.
   */
  private scheduleRead(id: string): void {
    const m = this.rooms.get(id);
    if (!m?.sdk || id !== this.visibleRoom || document.visibilityState !== "visible") return;
    m.seenSeq = Math.max(m.seenSeq, m.sdk.lastSeq ?? 0);
    if (this.readTimers.has(id)) return;
    this.readTimers.set(
      id,
      setTimeout(() => {
        this.readTimers.delete(id);
        const room = m.sdk;
        if (!room || this.rooms.get(id) !== m || m.seenSeq <= room.readSeq) return;
        // Offline: the "online" state change calls this again.
        if (this.client.state !== "online") return;
        room
          .markRead(m.seenSeq)
          .then(() => this.emit("rooms"))
          .catch(() => undefined); // retried on the next message, visit or reconnect
      }, 100),
    );
  }

  private scheduleTypingExpiry(): void {
    clearTimeout(this.typingTimer);
    let next = Infinity;
    const now = Date.now();
    for (const m of this.rooms.values()) {
      for (const [u, until] of m.typing) {
        if (until <= now) {
          m.typing.delete(u);
          this.emit("room", m.id, []);
        } else next = Math.min(next, until);
      }
    }
    if (next !== Infinity) this.typingTimer = setTimeout(() => this.scheduleTypingExpiry(), next - now + 20);
  }

  // ---- names -----------------------------------------------------------

  nameOf(userId: string): string {
    return this.names.get(userId) ?? userId.slice(0, 8);
  }

  private wantName(userId: string): void {
    if (this.names.has(userId) || this.nameRequests.has(userId)) return;
    this.nameRequests.add(userId);
    this.api
      .user(userId)
      .then((u) => {
        this.names.set(userId, u.deleted ? "(deleted user)" : u.display_name);
        this.emit("names");
      })
      .catch(() => undefined)
      .finally(() => this.nameRequests.delete(userId));
  }

  // ---- room list cache (so a reload shows the list before the network answers)

  private loadRoomCache(): void {
    try {
      const raw = localStorage.getItem(ROOMS_CACHE + this.me);
      const list = raw ? (JSON.parse(raw) as Array<{ id: string; name: string; role: "owner" | "member" }>) : [];
      for (const r of list) {
        const m = this.model(r.id);
        m.name = r.name;
        m.role = r.role;
      }
    } catch {
      // A corrupt cache only costs the early list.
    }
  }

  private saveRoomCache(): void {
    const list = [...this.rooms.values()].map((m) => ({ id: m.id, name: m.name, role: m.role }));
    localStorage.setItem(ROOMS_CACHE + this.me, JSON.stringify(list));
  }
}

/**
 * IndexedDB when the browser has it (private modes may not), else
 * localStorage; one per user, so two accounts used in turn in one browser
 * never see each other's rooms or outbox.
 */
function pickStore(userId: string): Store {
  return typeof indexedDB !== "undefined"
    ? new IndexedDBStore(`chatgw-demo-${userId}`)
    : new LocalStorageStore(`chatgw-demo:${userId}:`);
}

export function describe(e: unknown): string {
  if (e instanceof ChatError) return `${e.code}${e.message ? ` (${e.message})` : ""}`;
  if (e instanceof HttpError) return `${e.code}: ${e.message}`;
  if (e instanceof TypeError) return "network unreachable";
  return e instanceof Error ? e.message : String(e);
}
