-- The transactional outbox (0004) is gone: the relay (reprise-host) now publishes the
-- events themselves by tailing the gap-free global order from a checkpoint (a snapshot of
-- its `relay-<name>` stream), under a lease (reprise-postgres' PgLease), so appended and
-- published cannot diverge without a second table.
--
-- Rows still unpublished would never be published by anything after this migration, so it
-- refuses to run while any are left: drain them with the previous release's relay first.
DO $$
BEGIN
    IF EXISTS (SELECT FROM outbox WHERE published_at IS NULL) THEN
        RAISE EXCEPTION 'outbox still holds % unpublished message(s)',
            (SELECT count(*) FROM outbox WHERE published_at IS NULL)
            USING HINT = 'run the previous release''s OutboxRelay until the outbox is drained, then migrate',
                  ERRCODE = 'object_in_use';
    END IF;
END
$$;

DROP TABLE outbox;
