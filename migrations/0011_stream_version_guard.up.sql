-- The database itself refuses a gap in a stream's versions, whoever writes: 0001 makes a
-- (stream, version) pair unique and 0007 lets the append statement check expectations,
-- but a raw INSERT (a repair script, a restore, a bug in another writer) could still store
-- version 5 after version 2, and every reader folding the stream would then see a history
-- that never happened.
--
-- Statement-level, with the inserted rows as a transition table: one check per
-- statement, however many events the batch holds, and it sees the whole statement's
-- rows (a batch appending versions 3, 4 and 5 at once is contiguous). Each inserted
-- version above 1 needs its predecessor, inserted earlier or by the same statement.
CREATE FUNCTION events_refuse_version_gaps() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    gap record;
BEGIN
    SELECT i.stream_id, i.stream_version INTO gap
    FROM inserted i
    WHERE i.stream_version > 1
      AND NOT EXISTS (
          SELECT FROM events e
          WHERE e.stream_id = i.stream_id AND e.stream_version = i.stream_version - 1)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'stream %: version % would leave a gap (version % is missing)',
            gap.stream_id, gap.stream_version, gap.stream_version - 1
            USING ERRCODE = 'check_violation', CONSTRAINT = 'events_stream_versions_contiguous';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_stream_versions_contiguous
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT
    EXECUTE FUNCTION events_refuse_version_gaps();
