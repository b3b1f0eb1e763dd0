-- Edits and deletions as events in the room's ordered stream (protocol
-- §16). A change is a row of `messages` with its own seq, so replay, gap
-- fill and the bus carry it like a message; the target row is updated in
-- the same transaction to its current state.

-- 'message', or a change event: 'edit' (body = the new body) or 'delete'
-- (body empty).
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message'
    CHECK (kind IN ('message', 'edit', 'delete'));
-- The seq a change event applies to (NULL for a message).
ALTER TABLE messages ADD COLUMN target_seq BIGINT;
-- Why a 'delete' happened: 'author', 'owner', 'operator' or 'erased'.
ALTER TABLE messages ADD COLUMN reason TEXT;
-- On a message: when it was last edited.
ALTER TABLE messages ADD COLUMN edited_at BIGINT;
-- On a deleted message: who deleted it (a user id, or 'operator').
ALTER TABLE messages ADD COLUMN deleted_by TEXT;

-- Finds the edits of a message being deleted (their bodies are emptied too).
CREATE INDEX messages_target_idx ON messages (room_id, target_seq) WHERE target_seq IS NOT NULL;
