-- Pending saga deadlines, indexed by due time. The saga's own stream remains the source of
-- truth (deadline set/clear events); this table is the index a scheduler polls so that a
-- restarted node finds due deadlines without replaying every saga stream.
CREATE TABLE saga_deadlines (
    saga_name   text        NOT NULL CHECK (saga_name <> ''),
    saga_id     text        NOT NULL,
    deadline_id text        NOT NULL,
    due_at      timestamptz NOT NULL,
    input       jsonb       NOT NULL,
    PRIMARY KEY (saga_name, saga_id, deadline_id)
);

CREATE INDEX saga_deadlines_due_idx ON saga_deadlines (due_at);
