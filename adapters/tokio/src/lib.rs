//! Production runtime for Reprise stores on tokio
