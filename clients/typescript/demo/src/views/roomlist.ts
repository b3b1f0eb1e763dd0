/** The room list with unread badges, and the create-room form. */
import type { Chat } from "../chat.ts";
import { describe } from "../chat.ts";
import { h, replace } from "../dom.ts";

export class RoomList {
  readonly el: HTMLElement;
  private readonly list: HTMLUListElement;

  constructor(
    private readonly chat: Chat,
    private readonly onSelect: (roomId: string) => void,
    private selected: () => string | undefined,
  ) {
    this.list = h("ul", { class: "rooms", "data-test": "rooms" });
    this.el = h("aside", { class: "sidebar" }, h("h2", null, "Rooms"), this.list, this.createForm());
    chat.on("rooms", () => this.renderSoon());
    this.render();
  }

  private pending = false;

  /** Coalesces a burst of changes (a resume replays many messages) into one render per frame. */
  private renderSoon(): void {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  render(): void {
    const sel = this.selected();
    const items = this.chat.roomList().map((m) => {
      const unread = m.unread;
      const li = h(
        "li",
        { class: `room${m.id === sel ? " selected" : ""}`, "data-test": "room", "data-room": m.id, "data-unread": unread },
        h("span", { class: "room-name" }, m.name || "…"),
        unread > 0 ? h("span", { class: "unread", "data-test": "unread" }, unread) : null,
      );
      li.tabIndex = 0;
      li.addEventListener("click", () => this.onSelect(m.id));
      li.addEventListener("keydown", (e) => {
        if (e.key === "Enter") this.onSelect(m.id);
      });
      return li;
    });
    replace(this.list, ...(items.length ? items : [h("li", { class: "empty" }, "No rooms yet")]));
  }

  private createForm(): HTMLFormElement {
    const name = h("input", { name: "name", required: true, maxlength: 100, placeholder: "Room name" });
    const members = h("input", { name: "members", placeholder: "member emails, comma separated" });
    const error = h("p", { class: "form-error", role: "alert" });
    const form = h(
      "form",
      { class: "create", "data-test": "create-room" },
      h("h3", null, "New room"),
      name,
      members,
      h("button", { class: "btn", type: "submit" }, "Create"),
      error,
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const typed = { name: name.value, members: members.value };
      const emails = typed.members.split(/[\s,;]+/).filter(Boolean);
      error.textContent = "";
      // Cleared at once, so the next room can be typed while this one is
      // created; given back if the gateway refuses it.
      form.reset();
      this.chat
        .createRoom(typed.name.trim(), emails)
        .then((id) => this.onSelect(id))
        .catch((e: unknown) => {
          error.textContent = describe(e);
          if (!name.value && !members.value) {
            name.value = typed.name;
            members.value = typed.members;
          }
        });
    });
    return form;
  }
}
