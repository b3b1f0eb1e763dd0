/**
 * One room as the demo shows it: the messages on screen by seq, who is
 * typing, edits and deletes waiting for their target, the unread count.
 */

import type { Room } from "@chatgw/client";

/** The SDK's room object (the same one for the same id while the client lives). */
export type SdkRoom = Room;

export interface MessageView {
  seq: number;
  sender: string;
  body: string;
  sentAt: number;
  clientMsgId: string;
  editedAt?: number;
  deleted: boolean;
}

/** An edit or delete whose target is not on screen yet (history still loading). */
export interface PendingChange {
  kind: "edit" | "delete";
  body: string;
  at: number;
}

/** How long a typing notice shows without a new one (the SDK throttles to one per 2 s). */
export const TYPING_SHOW_MS = 4000;

export class RoomModel {
  readonly messages = new Map<number, MessageView>();
  readonly typing = new Map<string, number>();
  readonly pendingChanges = new Map<number, PendingChange>();
  name = "";
  role: "owner" | "member" = "member";
  /** From REST and room_seq, for a room the SDK has not joined (yet). */
  lastSeq = 0;
  readSeq = 0;
  sdk: SdkRoom | undefined;
  historyLoaded = false;
  /** Highest seq shown while the room was on screen (what markRead may claim). */
  seenSeq = 0;
  unsubscribe: Array<() => void> = [];

  constructor(readonly id: string) {}

  get unread(): number {
    if (this.sdk) return Math.max(0, this.sdk.unread);
    return Math.max(0, this.lastSeq - this.readSeq);
  }

  get online(): ReadonlySet<string> {
    return this.sdk?.online ?? new Set();
  }

  /** Messages in seq order. */
  sorted(): MessageView[] {
    return [...this.messages.values()].sort((a, b) => a.seq - b.seq);
  }

  typists(now = Date.now()): string[] {
    return [...this.typing].filter(([, until]) => until > now).map(([u]) => u);
  }
}
