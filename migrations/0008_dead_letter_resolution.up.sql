-- Dead letters as reprise-core's DeadLetterQueue contract describes them (resilience::
-- dead_letter): the message as it arrived (topic, key, payload, headers), why it failed
-- (error text and class) and after how many attempts, when (the caller's clock, not now()),
-- and what an operator decided: still pending, retried (sent back to its topic) or
-- discarded, and when. Resolving is one conditional UPDATE (status = 'pending'), so two
-- operators cannot both resolve the same letter.
--
-- Timestamps are the caller's nanosecond `Timestamp`s: timestamptz keeps microseconds (and
-- stays readable in SQL), the *_ns columns the nanoseconds below them, so a letter reads
-- back exactly as it was written.
ALTER TABLE dead_letters RENAME COLUMN source TO topic;
ALTER TABLE dead_letters RENAME COLUMN stream_id TO message_key;
UPDATE dead_letters SET message_key = '' WHERE message_key IS NULL;
ALTER TABLE dead_letters ALTER COLUMN message_key SET NOT NULL;
ALTER TABLE dead_letters ALTER COLUMN source_position DROP NOT NULL;
-- A poison message may not be valid JSON: keep its text as it arrived.
ALTER TABLE dead_letters ALTER COLUMN payload TYPE text;
ALTER TABLE dead_letters ALTER COLUMN failed_at DROP DEFAULT;

ALTER TABLE dead_letters
    ADD COLUMN failed_at_ns   smallint NOT NULL DEFAULT 0 CHECK (failed_at_ns BETWEEN 0 AND 999),
    -- Concurrency conflicts are never dead-lettered.
    ADD COLUMN error_class    text     NOT NULL DEFAULT 'permanent'
                                       CHECK (error_class IN ('transient', 'permanent')),
    ADD COLUMN status         text     NOT NULL DEFAULT 'pending'
                                       CHECK (status IN ('pending', 'retried', 'discarded')),
    ADD COLUMN resolved_at    timestamptz,
    ADD COLUMN resolved_at_ns smallint CHECK (resolved_at_ns BETWEEN 0 AND 999);

-- Rows written before this migration: replayed means retried.
UPDATE dead_letters
SET status = 'retried', resolved_at = replayed_at, resolved_at_ns = 0
WHERE replayed_at IS NOT NULL;
ALTER TABLE dead_letters ALTER COLUMN error_class DROP DEFAULT;

DROP INDEX dead_letters_pending_idx;
ALTER TABLE dead_letters DROP COLUMN replayed_at;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_resolved_iff_not_pending CHECK (
    (status = 'pending') = (resolved_at IS NULL)
    AND (resolved_at IS NULL) = (resolved_at_ns IS NULL)
);

-- Listing pending letters (per topic or not) in id order, and the oldest pending one.
CREATE INDEX dead_letters_pending_idx ON dead_letters (topic, id) WHERE status = 'pending';
CREATE INDEX dead_letters_pending_age_idx ON dead_letters (failed_at, failed_at_ns)
    WHERE status = 'pending';
