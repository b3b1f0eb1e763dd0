/** The SDK's error type and its codes: the protocol's plus the SDK's own. */
import type { ProtocolErrorCode, ServerError } from "./generated/protocol.js";

/**
 * Error codes a ChatError can carry: the protocol's (§6; a later server may
 * add codes, so any string is possible) plus the SDK's own:
 * - "closed": the client was closed (client.close(), or a close code that
 *   forbids reconnecting) before the request finished;
 * - "timeout": no answer in time;
 * - "network": the connection could not be established;
 * - "provider_failed": the credential provider threw something other than a
 *   ChatError (reported with the "reconnecting" state; retried).
 */
export type ChatErrorCode = ProtocolErrorCode | "closed" | "timeout" | "network" | "provider_failed" | (string & {});

/** Every failure the SDK reports is a ChatError with a machine-readable code. */
export class ChatError extends Error {
  readonly code: ChatErrorCode;
  /** The room the failed request concerned, if any. */
  readonly room?: string;
  /** With "rate_limited": how long the server asked to wait. */
  readonly retryAfterMs?: number;
  /** When caused by the socket closing: the WebSocket close code. */
  readonly closeCode?: number;
  /** The server's `error` frame, when there was one. */
  readonly frame?: ServerError;

  constructor(
    code: ChatErrorCode,
    message: string,
    extra: { room?: string; retryAfterMs?: number; closeCode?: number; frame?: ServerError } = {},
  ) {
    super(message);
    this.name = "ChatError";
    this.code = code;
    if (extra.room !== undefined) this.room = extra.room;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
    if (extra.frame !== undefined) this.frame = extra.frame;
  }

  /** Builds a ChatError from a server `error` frame. */
  static fromFrame(frame: ServerError): ChatError {
    return new ChatError(frame.code, frame.message, {
      ...(frame.room !== undefined ? { room: frame.room } : {}),
      ...(frame.retry_after_ms !== undefined ? { retryAfterMs: frame.retry_after_ms } : {}),
      frame,
    });
  }
}
