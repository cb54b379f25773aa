//! Reprise's simulator beside its peers: the same three workloads (`spec`) on
//! `reprise-sim` (`on_reprise`) and turmoil (`on_turmoil`); madsim's side lives in
//! `benches/peers-madsim`, outside the workspace, because madsim only simulates when the
//! whole build has `--cfg madsim`. `run.sh` runs all three alternately and prints the
//! table kept in `docs/performance.md` ("Peers").

pub mod on_reprise;
pub mod on_turmoil;
pub mod spec;

/// The simulators this package runs, by the names its binary and `run.sh` use.
pub const SIMULATORS: [&str; 2] = ["reprise", "turmoil"];
