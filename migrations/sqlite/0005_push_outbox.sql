-- The offline-push outbox (README "Offline push webhook"): one row per
-- stored message, written in the transaction that stores the message (only
-- when WEBHOOK_URL is set), deleted once the webhook took it (or gave up).
-- A row outlives a crash, so nothing committed is lost; a claim is a lease
-- (`next_attempt_at` moved into the future), so rows of an instance that
-- died mid-batch come due again and another instance delivers them.

CREATE TABLE push_outbox (
    -- The event id receivers deduplicate by (UUIDv7): stable across retries.
    id              TEXT PRIMARY KEY,
    room_id         TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    sender_id       TEXT NOT NULL,
    -- Unix milliseconds, the message's.
    sent_at         INTEGER NOT NULL,
    -- Deliveries tried so far (counted when claimed).
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Unix milliseconds: when the row is due; while claimed, when the
    -- claim's lease runs out.
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX push_outbox_due_idx ON push_outbox (next_attempt_at);
