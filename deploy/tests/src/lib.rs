//! Checks of the deployment artifacts — `deploy/` (Prometheus, Grafana, Kubernetes), the
//! root `Dockerfile` and `docker-compose.yml` — as data, against the contract of the
//! checkout service `reprise-shop` ([`contract`]). Nothing here runs Docker or a cluster;
//! `promtool` runs when it is on `PATH`. The tests are in `tests/`.

pub mod contract;
pub mod exposition;
pub mod files;
pub mod promql;
pub mod tools;
