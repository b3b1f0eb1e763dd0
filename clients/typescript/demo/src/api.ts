/**
 * The REST calls the demo makes, authenticated by the session. A 401 (the
 * access token expired early, or the server restarted with a new key) gets
 * one refresh and one retry.
 */
import { HttpError, requestJson, type RequestOptions } from "./http.ts";
import type { Session } from "./session.ts";

export interface RoomInfo {
  id: string;
  name: string;
  owner_id: string;
  last_seq: number;
  first_seq: number;
  epoch: string;
  role: "owner" | "member";
  read_seq: number;
  created_at: number;
}

/** An entry of a room's history: a message in its current state, or a change event. */
export interface HistoryEntry {
  type: "message" | "edit" | "delete";
  room: string;
  seq: number;
  sender: string;
  body: string;
  client_msg_id: string;
  sent_at: number;
  target_seq?: number;
  edited_at?: number;
  deleted?: boolean;
}

export interface PublicUser {
  id: string;
  display_name: string;
  deleted: boolean;
}

export class Api {
  constructor(private readonly session: Session) {}

  private async call<T>(path: string, opts: Omit<RequestOptions, "token"> = {}): Promise<T> {
    const token = await this.session.accessToken();
    try {
      return await requestJson<T>(path, { ...opts, token });
    } catch (e) {
      if (!(e instanceof HttpError) || e.status !== 401) throw e;
      await this.session.refresh();
      return requestJson<T>(path, { ...opts, token: await this.session.accessToken() });
    }
  }

  /** A single-use ticket for the WebSocket handshake (browsers cannot set headers). */
  async wsTicket(): Promise<string> {
    const r = await this.call<{ ticket: string }>("/auth/ws-ticket", { method: "POST" });
    return r.ticket;
  }

  async rooms(): Promise<RoomInfo[]> {
    return (await this.call<{ rooms: RoomInfo[] }>("/rooms")).rooms;
  }

  createRoom(name: string, memberEmails: string[]): Promise<RoomInfo> {
    return this.call<RoomInfo>("/rooms", { method: "POST", body: { name, member_emails: memberEmails } });
  }

  addMember(room: string, email: string): Promise<{ room_id: string; user_id: string }> {
    return this.call(`/rooms/${encodeURIComponent(room)}/members`, { method: "POST", body: { email } });
  }

  leave(room: string, userId: string): Promise<void> {
    return this.call(`/rooms/${encodeURIComponent(room)}/members/${encodeURIComponent(userId)}`, {
      method: "DELETE",
    });
  }

  /** The newest `limit` entries up to and including `upToSeq` (ascending). */
  async history(room: string, upToSeq: number, limit = 100): Promise<HistoryEntry[]> {
    const q = new URLSearchParams({ before_seq: String(upToSeq + 1), limit: String(limit) });
    const page = await this.call<{ messages: HistoryEntry[] }>(`/rooms/${encodeURIComponent(room)}/messages?${q}`);
    return page.messages;
  }

  user(id: string): Promise<PublicUser> {
    return this.call<PublicUser>(`/users/${encodeURIComponent(id)}`);
  }
}
