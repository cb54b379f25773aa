//! PostgreSQL event store for Reprise (sqlx)
