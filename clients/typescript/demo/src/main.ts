/**
 * Entry point: restore the session (or show the sign-in form), then build
 * the chat model and its views. Signing out tears everything down so the
 * next user starts from a clean model and a new SDK client.
 */
import "../app.css";
import { Chat, describe, type ConnView } from "./chat.ts";
import { byId, h, replace } from "./dom.ts";
import { HttpError } from "./http.ts";
import { Session } from "./session.ts";
import { showAuth } from "./views/auth.ts";
import { RoomList } from "./views/roomlist.ts";
import { RoomPane } from "./views/roompane.ts";

const app = byId("app");
const conn = byId("conn");
const outbox = byId("outbox");
const me = byId("me");
const signOutButton = byId<HTMLButtonElement>("signout");

const BADGE: Record<ConnView, string> = {
  connecting: "connecting…",
  online: "online",
  reconnecting: "reconnecting…",
  offline: "offline",
};

/** `data-state` is what the badge says; `data-client-state` the SDK's own state (tests read both). */
function setBadge(state: ConnView | "signed-out", clientState = "closed"): void {
  conn.dataset.state = state;
  conn.dataset.clientState = clientState;
  conn.className = `badge badge-${state}`;
  conn.textContent = state === "signed-out" ? "signed out" : BADGE[state];
}

let current: { chat: Chat; session: Session } | undefined;

function signedOut(message?: string): void {
  current?.chat.stop();
  current = undefined;
  setBadge("signed-out");
  me.textContent = "";
  outbox.hidden = true;
  signOutButton.hidden = true;
  showAuth(app, (s) => void startChat(s));
  if (message) app.prepend(h("p", { class: "notice" }, message));
}

async function startChat(session: Session): Promise<void> {
  const chat = new Chat(session);
  current = { chat, session };
  me.textContent = session.user.display_name;
  me.title = session.user.email ?? "";
  signOutButton.hidden = false;

  let selected: string | undefined;
  const notices = h("div", { class: "notices", "data-test": "notices", "aria-live": "polite" });
  const pane = new RoomPane(chat);
  const select = (id: string | undefined): void => {
    selected = id;
    pane.show(id);
    chat.setVisibleRoom(id);
    list.render();
    if (id) history.replaceState(null, "", `#${id}`);
  };
  const list = new RoomList(chat, select, () => selected);
  replace(app, h("div", { class: "layout" }, list.el, pane.el), notices);

  chat.on("state", (view) => setBadge(view, chat.client.state));
  chat.on("outbox", () => {
    const n = chat.client.outbox.length;
    outbox.hidden = n === 0;
    outbox.textContent = `${n} unsent`;
  });
  chat.on("notice", (text) => {
    const item = h("p", { class: "notice" }, text);
    notices.append(item);
    setTimeout(() => item.remove(), 6000);
  });
  chat.on("signedOut", () => {
    void session.signOut();
    signedOut("Your session ended; please sign in again.");
  });
  chat.on("rooms", () => {
    if (selected && !chat.rooms.has(selected)) select(undefined);
  });
  setBadge(chat.connView, chat.client.state);

  await chat.start();
  // Reopen the room from the address (a reload keeps its place).
  const fromHash = decodeURIComponent(location.hash.slice(1));
  if (fromHash && chat.rooms.has(fromHash)) select(fromHash);
  else if (fromHash) {
    const off = chat.on("rooms", () => {
      if (chat.rooms.has(fromHash)) {
        off();
        if (!selected) select(fromHash);
      }
    });
  }
}

signOutButton.addEventListener("click", () => {
  const s = current?.session;
  signedOut();
  void s?.signOut();
  history.replaceState(null, "", location.pathname);
});

async function boot(): Promise<void> {
  setBadge("signed-out");
  try {
    const session = await Session.restore();
    if (session) return void (await startChat(session));
    signedOut();
  } catch (e) {
    signedOut(e instanceof HttpError ? undefined : `Cannot reach the server (${describe(e)}); sign in when it is back.`);
  }
}

void boot();
