/**
 * JSON over fetch, with the gateway's error body turned into a typed error.
 * Same origin only: the gateway serves the page and the API together, so no
 * CORS and no base URL to configure.
 */

/** A non-2xx answer, with the gateway's `error.code` (`unauthorized`, ...). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "HttpError";
  }
}

/** Whether `e` is a network failure (offline, server down) rather than an answer. */
export function isNetworkError(e: unknown): boolean {
  return e instanceof TypeError;
}

export interface RequestOptions {
  method?: "GET" | "POST" | "PATCH" | "DELETE";
  body?: unknown;
  token?: string;
}

export async function requestJson<T>(path: string, opts: RequestOptions = {}): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (opts.body !== undefined) headers["content-type"] = "application/json";
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  const res = await fetch(`/api/v1${path}`, {
    method: opts.method ?? "GET",
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    cache: "no-store",
  });
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!res.ok) {
    const err = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
    throw new HttpError(res.status, err?.code ?? "http_" + res.status, err?.message ?? res.statusText);
  }
  return parsed as T;
}
