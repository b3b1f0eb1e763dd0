-- One namespace of client_msg_id per room and sender across sends, edits
-- and deletes (protocol §13.3): a retried send is a duplicate only when it
-- carries the body that was sent. An edit overwrites `body`, so the first
-- edit of a message keeps the SHA-256 (hex) of the body as sent here; a
-- delete clears it with the body (a deleted message keeps nothing of its
-- text). NULL for a message never edited (its `body` is still the one sent).
ALTER TABLE messages ADD COLUMN sent_digest TEXT;
