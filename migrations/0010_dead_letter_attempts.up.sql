-- A letter may record zero handler attempts: a message that could not even be decoded
-- (not UTF-8, a tombstone, not a Reprise message) is parked before any handler ran, and
-- the Kafka side writes exactly that (`reprise-dlq-attempts: 0`). 0005's `attempts > 0`
-- refused such a letter when it was moved into this table.
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_attempts_check;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_attempts_check CHECK (attempts >= 0);
