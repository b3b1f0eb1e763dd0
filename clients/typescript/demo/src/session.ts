/**
 * The signed-in session: the access token in memory only, the refresh token
 * in localStorage so a reload (or a new tab) signs in again without the
 * password. Refresh tokens are single use, so refreshes are single-flight:
 * two callers needing a token at once must not spend the same one twice
 * (the gateway would revoke the whole session).
 */
import { HttpError, requestJson } from "./http.ts";

export interface User {
  id: string;
  email: string | null;
  display_name: string;
  created_at: number;
}

interface AuthResponse {
  user: User;
  access_token: string;
  refresh_token: string;
  expires_in_ms: number;
}

const REFRESH_KEY = "chatgw-demo:refresh";
/**
 * Renew this long before the access token runs out (clock skew, slow
 * networks): 30 s, or a quarter of a short token's life.
 */
const EARLY_MS = 30_000;

export class Session {
  private access = "";
  private expiresAt = 0;
  private early = EARLY_MS;
  private obtainedAt = 0;
  private ttl = 0;
  private refreshing: Promise<void> | undefined;

  private constructor(
    public user: User,
    private readonly storage: Storage,
  ) {}

  /** Resumes from the stored refresh token; undefined when there is none or it was refused. */
  static async restore(storage: Storage = localStorage): Promise<Session | undefined> {
    const token = storage.getItem(REFRESH_KEY);
    if (!token) return undefined;
    try {
      const auth = await requestJson<AuthResponse>("/auth/refresh", {
        method: "POST",
        body: { refresh_token: token },
      });
      return Session.from(auth, storage);
    } catch (e) {
      // Refused: the session ended elsewhere. A network failure keeps the
      // token for the next try, but we cannot sign in offline.
      if (e instanceof HttpError && e.status === 401) storage.removeItem(REFRESH_KEY);
      throw e;
    }
  }

  static async signIn(email: string, password: string, storage: Storage = localStorage): Promise<Session> {
    const auth = await requestJson<AuthResponse>("/auth/login", { method: "POST", body: { email, password } });
    return Session.from(auth, storage);
  }

  static async register(
    email: string,
    password: string,
    displayName: string,
    storage: Storage = localStorage,
  ): Promise<Session> {
    const auth = await requestJson<AuthResponse>("/auth/register", {
      method: "POST",
      body: { email, password, display_name: displayName },
    });
    return Session.from(auth, storage);
  }

  private static from(auth: AuthResponse, storage: Storage): Session {
    const s = new Session(auth.user, storage);
    s.accept(auth);
    return s;
  }

  private accept(auth: AuthResponse): void {
    this.user = auth.user;
    this.access = auth.access_token;
    this.obtainedAt = Date.now();
    this.ttl = auth.expires_in_ms;
    this.expiresAt = this.obtainedAt + auth.expires_in_ms;
    this.early = Math.min(EARLY_MS, auth.expires_in_ms / 4);
    this.storage.setItem(REFRESH_KEY, auth.refresh_token);
  }

  /** A valid access token, refreshed first when it is (nearly) expired. */
  async accessToken(): Promise<string> {
    if (!this.access || Date.now() > this.expiresAt - this.early) await this.refresh();
    return this.access;
  }

  /**
   * A token for renewing the socket's credential (`auth`): the SDK asks
   * shortly before the socket's credential runs out, so the token in hand is
   * about to expire too and a new one is fetched, unless one was fetched
   * just now. (The expiry this page computes from `expires_in_ms` and the
   * server's second-granular `exp` differ by up to a second, which matters
   * for short-lived tokens.)
   */
  async renewedAccessToken(): Promise<string> {
    if (!this.access || Date.now() - this.obtainedAt > Math.min(10_000, this.ttl / 4)) await this.refresh();
    return this.access;
  }

  /** Rotates the refresh token (single-flight). */
  refresh(): Promise<void> {
    this.refreshing ??= (async () => {
      try {
        const token = this.storage.getItem(REFRESH_KEY);
        if (!token) throw new HttpError(401, "unauthorized", "signed out");
        const auth = await requestJson<AuthResponse>("/auth/refresh", {
          method: "POST",
          body: { refresh_token: token },
        });
        this.accept(auth);
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  /** Ends the session on the server (best effort) and forgets the tokens. */
  async signOut(): Promise<void> {
    const token = this.access;
    this.access = "";
    this.storage.removeItem(REFRESH_KEY);
    if (token) {
      await requestJson<void>("/auth/logout", { method: "POST", token }).catch(() => undefined);
    }
  }
}
