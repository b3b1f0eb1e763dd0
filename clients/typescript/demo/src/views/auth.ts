/** The sign-in / register form. Resolves with a session; errors stay on the form. */
import { h, replace } from "../dom.ts";
import { HttpError } from "../http.ts";
import { Session } from "../session.ts";

export function showAuth(root: HTMLElement, onSession: (s: Session) => void): void {
  const email = h("input", { name: "email", type: "email", autocomplete: "username", required: true, placeholder: "alice@example.com" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true, minlength: 8, placeholder: "8 characters or more" });
  const displayName = h("input", { name: "display_name", autocomplete: "nickname", placeholder: "only to create an account" });
  const error = h("p", { class: "form-error", "data-test": "auth-error", role: "alert" });
  const signIn = h("button", { type: "submit", class: "btn", "data-test": "signin", value: "signin" }, "Sign in");
  const register = h("button", { type: "submit", class: "btn btn-secondary", "data-test": "register", value: "register" }, "Create account");
  const form = h(
    "form",
    { class: "card auth", "data-test": "auth-form" },
    h("h2", null, "Sign in"),
    h("label", null, "Email", email),
    h("label", null, "Password", password),
    h("label", null, "Display name (new account)", displayName),
    h("div", { class: "row" }, signIn, register),
    error,
  );
  form.addEventListener("submit", (ev: SubmitEvent) => {
    ev.preventDefault();
    const creating = (ev.submitter as HTMLButtonElement | null)?.value === "register";
    const name = displayName.value.trim() || email.value.split("@")[0] || "user";
    error.textContent = "";
    signIn.disabled = register.disabled = true;
    const attempt = creating
      ? Session.register(email.value.trim(), password.value, name)
      : Session.signIn(email.value.trim(), password.value);
    attempt
      .then(onSession)
      .catch((e: unknown) => {
        error.textContent =
          e instanceof HttpError ? e.message : e instanceof TypeError ? "The server cannot be reached." : String(e);
      })
      .finally(() => {
        signIn.disabled = register.disabled = false;
      });
  });
  replace(root, h("section", { class: "auth-wrap" }, form));
  email.focus();
}
