-- Where each catch-up subscription resumes: the global position of the last event it has
-- finished handling. Written only after the handler is done (at-least-once delivery).
CREATE TABLE subscription_checkpoints (
    subscription_id text        PRIMARY KEY CHECK (subscription_id <> ''),
    position        bigint      NOT NULL CHECK (position >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
