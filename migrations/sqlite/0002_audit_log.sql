-- The audit log of security events (README "Audit log"). Ids only: never
-- an email, a token, a name or a message body. Append-only: the triggers
-- below refuse every UPDATE, and every DELETE of a record younger than a
-- day, so the only deletes that pass are the retention purge's
-- (AUDIT_RETENTION_DAYS is at least 1 day or 0 = forever).

CREATE TABLE audit_log (
    -- AUTOINCREMENT: ids are never reused, even after the newest rows are
    -- purged, so `before=` cursors stay meaningful.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Unix milliseconds.
    at          INTEGER NOT NULL,
    -- Who acted: NULL for the operator (admin API), the system, or an
    -- unauthenticated caller.
    actor_id    TEXT,
    -- Whom it concerns: NULL when unknown (a login for an unknown email).
    target_id   TEXT,
    action      TEXT NOT NULL,
    -- The client address behind trusted proxies (TRUSTED_PROXIES).
    client_addr TEXT
);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, id);
CREATE INDEX audit_log_target_idx ON audit_log (target_id, id);
CREATE INDEX audit_log_action_idx ON audit_log (action, id);
CREATE INDEX audit_log_at_idx ON audit_log (at);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_early_delete BEFORE DELETE ON audit_log
WHEN OLD.at > CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - 86400000
BEGIN
    SELECT RAISE(ABORT, 'audit_log records younger than a day cannot be deleted');
END;
