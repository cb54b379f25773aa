-- Messages a handler gave up on (poison messages), with where they came from and why, so an
-- operator can inspect and replay them. Concurrency conflicts never land here: they are
-- resolved by reloading and deciding again, not by parking the message.
CREATE TABLE dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source          text        NOT NULL CHECK (source <> ''),  -- subscription or topic
    source_position text        NOT NULL,                      -- global position or partition/offset
    event_id        uuid,
    stream_id       text,
    payload         json        NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '[]',
    error           text        NOT NULL,
    attempts        integer     NOT NULL CHECK (attempts > 0),
    failed_at       timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz
);

CREATE INDEX dead_letters_pending_idx ON dead_letters (source, id) WHERE replayed_at IS NULL;
