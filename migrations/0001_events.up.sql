-- The event log and the per-stream version table that serialises writers of one stream.
--
-- Tables are created unqualified: the adapter sets `search_path` to its configured schema,
-- so one database can hold several isolated stores (tests, benchmarks, tenants).

-- One row per stream: its current version. Appends lock the rows of the streams they touch
-- (INSERT .. ON CONFLICT DO UPDATE), which serialises writers per stream without a global
-- lock and gives `stream_version` in O(1).
CREATE TABLE streams (
    stream_id   text   PRIMARY KEY,
    version     bigint NOT NULL CHECK (version >= 0)
);

-- global_position = (writing transaction's xid8 << 16) | ordinal within that transaction.
-- Positions therefore follow transaction-id order, and a reader that only returns rows whose
-- transaction id is below pg_snapshot_xmin(pg_current_snapshot()) can never skip a row that
-- commits later (see adapters/postgres/src/lib.rs, "Gap-free global order").
CREATE TABLE events (
    global_position bigint      PRIMARY KEY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL CHECK (event_type <> ''),
    schema_version  integer     NOT NULL CHECK (schema_version > 0),
    -- json, not jsonb: stored and returned byte for byte (no re-serialisation on every
    -- read, which costs more than the rest of a catch-up read; payload hashes and
    -- signatures survive). Operators can still query it: payload->>'field', payload::jsonb.
    payload         json        NOT NULL,
    correlation_id  uuid,
    causation_id    uuid,
    traceparent     text,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    -- A transaction owns the 65535 positions after (xid << 16); more would spill into the
    -- next transaction's range, so the adapter refuses it and this check is the backstop.
    CONSTRAINT events_position_in_own_transaction_range
        CHECK ((global_position >> 16) = (transaction_id::text::bigint)
               AND (global_position & 65535) > 0)
);

-- An append-only table that grows fast: keep planner statistics fresh so range reads by
-- position use the primary key index in order instead of sorting.
ALTER TABLE events SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 5000);

-- Incident queries: "everything one request caused".
CREATE INDEX events_correlation_id_idx ON events (correlation_id) WHERE correlation_id IS NOT NULL;
