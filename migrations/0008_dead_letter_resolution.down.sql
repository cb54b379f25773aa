-- Back to 0005's shape. Retried and discarded letters both become "replayed" (0005 knew no
-- other resolution); error classes and sub-microsecond times are dropped; payloads that are
-- not JSON are kept as JSON strings rather than failing the rollback.
DROP INDEX dead_letters_pending_age_idx;
DROP INDEX dead_letters_pending_idx;

ALTER TABLE dead_letters ADD COLUMN replayed_at timestamptz;
UPDATE dead_letters SET replayed_at = resolved_at WHERE status <> 'pending';

ALTER TABLE dead_letters
    DROP CONSTRAINT dead_letters_resolved_iff_not_pending,
    DROP COLUMN resolved_at_ns,
    DROP COLUMN resolved_at,
    DROP COLUMN status,
    DROP COLUMN error_class,
    DROP COLUMN failed_at_ns;

ALTER TABLE dead_letters ALTER COLUMN failed_at SET DEFAULT now();

CREATE FUNCTION pg_temp.dead_letter_payload_as_json(payload text) RETURNS json
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN payload::json;
EXCEPTION WHEN invalid_text_representation THEN
    RETURN to_json(payload);
END
$$;
ALTER TABLE dead_letters
    ALTER COLUMN payload TYPE json USING pg_temp.dead_letter_payload_as_json(payload);
DROP FUNCTION pg_temp.dead_letter_payload_as_json(text);

UPDATE dead_letters SET source_position = '' WHERE source_position IS NULL;
ALTER TABLE dead_letters ALTER COLUMN source_position SET NOT NULL;
ALTER TABLE dead_letters ALTER COLUMN message_key DROP NOT NULL;
ALTER TABLE dead_letters RENAME COLUMN message_key TO stream_id;
ALTER TABLE dead_letters RENAME COLUMN topic TO source;

CREATE INDEX dead_letters_pending_idx ON dead_letters (source, id) WHERE replayed_at IS NULL;
