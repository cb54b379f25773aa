-- Back to 0008: the outbox table of 0004, empty (published rows were not kept).
-- Transactional outbox: messages written in the same transaction as the events they
-- announce, so "appended" and "will be published" cannot diverge. A relay publishes rows in
-- id order and stamps published_at; consumers deduplicate on the event id header.
CREATE TABLE outbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text        NOT NULL CHECK (topic <> ''),
    message_key  text        NOT NULL,
    payload      json        NOT NULL,  -- byte for byte what the relay publishes
    -- Kafka headers: ordered, duplicates allowed, hence an array of [name, value] pairs.
    headers      jsonb       NOT NULL DEFAULT '[]',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

-- The relay's work queue: only unpublished rows, in id order.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
