/**
 * The open room: header with presence and membership actions, messages in
 * seq order, the sends still in the outbox, the typing line and the composer.
 *
 * Message rows are keyed by seq and patched in place, so an edit field being
 * typed into survives other messages arriving, and each seq has exactly one
 * row (the browser test counts them).
 */
import { describe, type Chat, type MessageView, type RoomModel } from "../chat.ts";
import { formatTime, h, replace } from "../dom.ts";

export class RoomPane {
  readonly el: HTMLElement;
  private roomId: string | undefined;
  private readonly title = h("h2", { class: "room-title", "data-test": "room-title" });
  private readonly online = h("p", { class: "online", "data-test": "online" });
  private readonly actions = h("div", { class: "room-actions" });
  private readonly messages = h("ol", { class: "messages", "data-test": "messages" });
  private readonly pendingList = h("ol", { class: "messages pending-list", "data-test": "pending-list" });
  private readonly typingLine = h("p", { class: "typing", "data-test": "typing", "aria-live": "polite" });
  private readonly input = h("textarea", { name: "body", rows: 2, placeholder: "Write a message (Enter to send)", "data-test": "body" });
  private readonly composer: HTMLFormElement;
  private readonly scroller: HTMLElement;
  private readonly rows = new Map<number, HTMLLIElement>();
  private editing: number | undefined;

  constructor(private readonly chat: Chat) {
    this.composer = h(
      "form",
      { class: "composer", "data-test": "composer" },
      this.input,
      h("button", { class: "btn", type: "submit", "data-test": "send" }, "Send"),
    );
    this.composer.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) {
        ev.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener("input", () => {
      if (this.roomId && this.input.value) this.chat.typing(this.roomId);
    });
    this.scroller = h("div", { class: "scroller" }, this.messages, this.pendingList);
    this.el = h(
      "section",
      { class: "pane", "data-test": "pane" },
      h("header", { class: "pane-head" }, h("div", null, this.title, this.online), this.actions),
      this.scroller,
      this.typingLine,
      this.composer,
    );
    chat.on("room", (id, seqs) => {
      if (id !== this.roomId) return;
      if (!chat.rooms.has(id)) return this.show(undefined);
      this.patch(seqs);
      this.renderMeta();
    });
    chat.on("outbox", () => this.renderPending());
    chat.on("names", () => this.renderNames());
    chat.on("rooms", () => this.renderHead());
    chat.on("state", () => this.renderHead());
    this.show(undefined);
  }

  /** Shows a room (undefined: the empty state). */
  show(roomId: string | undefined): void {
    this.roomId = roomId;
    this.editing = undefined;
    this.el.classList.toggle("empty", !roomId);
    this.composer.hidden = !roomId;
    this.renderAll();
    if (roomId) this.input.focus();
  }

  private get model(): RoomModel | undefined {
    return this.roomId ? this.chat.rooms.get(this.roomId) : undefined;
  }

  private submit(): void {
    const body = this.input.value.trim();
    if (!body || !this.roomId) return;
    this.chat.send(this.roomId, body);
    this.input.value = "";
    this.stickToBottom(true);
  }

  private renderAll(): void {
    this.rows.clear();
    replace(this.messages);
    const m = this.model;
    if (m) this.patch(m.sorted().map((x) => x.seq));
    this.renderMeta();
  }

  /** A name arrived: relabel rows in place (a full render would drop an edit in progress). */
  private renderNames(): void {
    for (const row of this.rows.values()) {
      const who = row.querySelector(".who");
      if (who && row.dataset.sender) who.textContent = this.chat.nameOf(row.dataset.sender);
    }
    this.renderMeta();
  }

  private renderMeta(): void {
    this.renderHead();
    this.renderPending();
    this.renderTyping();
  }

  private renderHead(): void {
    const m = this.model;
    if (!m) {
      this.title.textContent = "Pick a room, or create one";
      replace(this.online);
      replace(this.actions);
      return;
    }
    this.title.textContent = m.name || "…";
    // Presence is only known while connected (§5.8: it is not replayed).
    const live = this.chat.client.state === "online";
    const names = [...m.online].map((u) => this.chat.nameOf(u)).sort();
    this.online.classList.toggle("stale", !live);
    replace(
      this.online,
      h("span", { class: "dot" }),
      !live ? "presence unknown while disconnected" : names.length ? `online: ${names.join(", ")}` : "nobody online",
    );
    this.online.dataset.users = live ? [...m.online].sort().join(",") : "";
    if (this.actions.dataset.room !== m.id) {
      this.actions.dataset.room = m.id;
      replace(this.actions, m.role === "owner" ? this.addMemberForm(m.id) : this.leaveButton(m.id));
    }
  }

  private addMemberForm(roomId: string): HTMLFormElement {
    const email = h("input", { name: "email", type: "email", required: true, placeholder: "add member by email" });
    const status = h("span", { class: "form-error", role: "alert" });
    const form = h("form", { class: "add-member", "data-test": "add-member" }, email, h("button", { class: "btn btn-secondary", type: "submit" }, "Add"), status);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      status.textContent = "";
      this.chat
        .addMember(roomId, email.value.trim())
        .then(() => {
          status.textContent = "added";
          form.reset();
        })
        .catch((e: unknown) => (status.textContent = describe(e)));
    });
    return form;
  }

  private leaveButton(roomId: string): HTMLButtonElement {
    const b = h("button", { class: "btn btn-quiet", type: "button", "data-test": "leave" }, "Leave room");
    b.addEventListener("click", () => {
      this.chat.leave(roomId).catch((e: unknown) => b.replaceWith(h("span", { class: "form-error" }, describe(e))));
    });
    return b;
  }

  private renderTyping(): void {
    const m = this.model;
    const who = m ? m.typists().map((u) => this.chat.nameOf(u)) : [];
    this.typingLine.textContent =
      who.length === 0 ? "" : who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
  }

  private renderPending(): void {
    if (!this.roomId) return replace(this.pendingList);
    const items = this.chat.pending(this.roomId).map((p) =>
      h(
        "li",
        { class: "msg mine pending", "data-test": "pending", "data-client-msg-id": p.clientMsgId },
        h("div", { class: "meta" }, h("span", { class: "who" }, this.chat.nameOf(this.chat.me)), h("span", { class: "time" }, "sending…")),
        h("div", { class: "body" }, p.body),
      ),
    );
    replace(this.pendingList, ...items);
  }

  /** (Re)renders the rows of these seqs, each at its place in seq order. */
  private patch(seqs: number[]): void {
    const m = this.model;
    if (!m || seqs.length === 0) return;
    const atBottom = this.isAtBottom();
    for (const seq of seqs) {
      const msg = m.messages.get(seq);
      if (!msg) continue;
      const row = this.row(msg);
      const old = this.rows.get(seq);
      if (old) {
        if (this.editing === seq) continue;
        old.replaceWith(row);
      } else {
        let before: Element | null = null;
        for (const el of Array.from(this.messages.children)) {
          if (Number((el as HTMLElement).dataset.seq) > seq) {
            before = el;
            break;
          }
        }
        this.messages.insertBefore(row, before);
      }
      this.rows.set(seq, row);
    }
    this.stickToBottom(atBottom);
  }

  private row(msg: MessageView): HTMLLIElement {
    const mine = msg.sender === this.chat.me;
    const body = msg.deleted
      ? h("div", { class: "body deleted" }, "message deleted")
      : h("div", { class: "body" }, msg.body);
    const tools =
      mine && !msg.deleted
        ? h(
            "span",
            { class: "tools" },
            this.tool("edit", () => this.startEdit(msg, body)),
            this.tool("delete", () => this.roomId && this.chat.remove(this.roomId, msg.seq)),
          )
        : null;
    return h(
      "li",
      {
        class: `msg${mine ? " mine" : ""}${msg.deleted ? " is-deleted" : ""}`,
        "data-test": "message",
        "data-seq": msg.seq,
        "data-sender": msg.sender,
        "data-client-msg-id": msg.clientMsgId,
      },
      h(
        "div",
        { class: "meta" },
        h("span", { class: "who" }, this.chat.nameOf(msg.sender)),
        h("time", { class: "time", datetime: new Date(msg.sentAt).toISOString() }, formatTime(msg.sentAt)),
        msg.editedAt && !msg.deleted ? h("span", { class: "edited" }, "edited") : null,
        tools,
      ),
      body,
    );
  }

  private tool(label: string, act: () => void): HTMLButtonElement {
    const b = h("button", { class: "tool", type: "button", "data-test": label }, label);
    b.addEventListener("click", act);
    return b;
  }

  private startEdit(msg: MessageView, body: HTMLElement): void {
    const field = h("input", { class: "edit-field", value: msg.body, "data-test": "edit-field" });
    this.editing = msg.seq;
    const done = (save: boolean): void => {
      if (this.editing !== msg.seq) return;
      this.editing = undefined;
      const text = field.value.trim();
      if (save && text && text !== msg.body && this.roomId) this.chat.edit(this.roomId, msg.seq, text);
      this.patch([msg.seq]);
    };
    field.addEventListener("keydown", (e) => {
      if (e.key === "Enter") done(true);
      if (e.key === "Escape") done(false);
    });
    field.addEventListener("blur", () => done(true));
    body.replaceWith(field);
    field.focus();
  }

  private isAtBottom(): boolean {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 40;
  }

  private stickToBottom(force: boolean): void {
    if (force) this.scroller.scrollTop = this.scroller.scrollHeight;
  }
}
