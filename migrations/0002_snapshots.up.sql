-- The latest snapshot per stream. A snapshot is a cache of folded state: losing one costs
-- a longer replay, never correctness, so only the newest is kept.
CREATE TABLE snapshots (
    stream_id      text        PRIMARY KEY,
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    schema_version integer     NOT NULL CHECK (schema_version > 0),
    state          json        NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);
