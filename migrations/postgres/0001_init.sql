-- Initial schema (PostgreSQL). Times are Unix milliseconds (BIGINT) so the
-- same queries run unchanged on SQLite; ids are opaque TEXT.

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    email        TEXT,
    -- Lower-cased email: uniqueness is case-insensitive. NULL once erased.
    email_lower  TEXT UNIQUE,
    display_name TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    deleted_at   BIGINT,
    banned_at    BIGINT
);

CREATE TABLE credentials (
    user_id       TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- argon2id PHC string
    password_hash TEXT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- A login session: the family of refresh tokens rotated from one login.
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

CREATE TABLE refresh_tokens (
    id         TEXT PRIMARY KEY,
    -- SHA-256 of the opaque token; the token itself is never stored.
    token_hash TEXT NOT NULL UNIQUE,
    family_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    parent_id  TEXT,
    user_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

CREATE TABLE ws_tickets (
    ticket_hash TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

CREATE TABLE rooms (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    owner_id   TEXT NOT NULL REFERENCES users (id),
    -- Highest allocated message seq; bumped in the append transaction.
    last_seq   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE memberships (
    room_id   TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

CREATE TABLE messages (
    room_id       TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    sender_id     TEXT NOT NULL,
    body          TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    sent_at       BIGINT NOT NULL,
    -- Set when the sender erased their account: body emptied, seq kept.
    deleted_at    BIGINT,
    PRIMARY KEY (room_id, seq),
    UNIQUE (room_id, sender_id, client_msg_id)
);
CREATE INDEX messages_sender_idx ON messages (sender_id);

CREATE TABLE read_markers (
    room_id    TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- Replays of POSTs retried with the same Idempotency-Key.
CREATE TABLE idempotency_keys (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    idem_key    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status      INTEGER,
    body        TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);
