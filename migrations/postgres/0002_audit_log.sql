-- The audit log of security events (README "Audit log"). Ids only: never
-- an email, a token, a name or a message body. Append-only: the triggers
-- below refuse every UPDATE and TRUNCATE, and every DELETE of a record
-- younger than a day, so the only deletes that pass are the retention
-- purge's (AUDIT_RETENTION_DAYS is at least 1 day or 0 = forever).

CREATE TABLE audit_log (
    -- An identity is never reused, so `before=` cursors stay meaningful.
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Unix milliseconds.
    at          BIGINT NOT NULL,
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

CREATE FUNCTION audit_log_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.at > (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 86400000 THEN
            RAISE EXCEPTION 'audit_log records younger than a day cannot be deleted';
        END IF;
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_guard();
CREATE TRIGGER audit_log_no_early_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_guard();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_guard();
