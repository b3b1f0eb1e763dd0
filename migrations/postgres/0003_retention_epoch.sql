-- Retention and history epochs (protocol 1.1, §17).
--
-- first_seq: the lowest seq that may still be stored. Messages below it are
-- gone (retention, history reset); history and replay never show them, and a
-- resume below it is answered with `history_gone`. Seqs stay gap-free and
-- keep counting from last_seq.
-- epoch: an opaque short string naming one history of the room. A new one
-- is drawn on creation, on an operator's history reset and by
-- `chatgw bump-epochs` after a database restore; a client holding another
-- epoch drops its local copy (`reset`).
-- retention_*: the owner's per-room override of RETENTION_MAX_AGE_SECS /
-- RETENTION_MAX_MESSAGES; NULL follows the global setting, 0 keeps forever.
ALTER TABLE rooms ADD COLUMN first_seq BIGINT NOT NULL DEFAULT 1;
ALTER TABLE rooms ADD COLUMN epoch TEXT NOT NULL DEFAULT '';
ALTER TABLE rooms ADD COLUMN retention_max_age_secs BIGINT;
ALTER TABLE rooms ADD COLUMN retention_max_messages BIGINT;
UPDATE rooms SET epoch = substr(md5(random()::text || id), 1, 12) WHERE epoch = '';
