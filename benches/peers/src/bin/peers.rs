//! `peers [--sim reprise|turmoil|all] [--workload rtt|sleeps|loss|all] [--reps N]
//! [--warmup N] [--smoke]`: times the workloads (see `reprise_peers::spec`) and prints one
//! line per run and the medians. `benches/peers/run.sh` interleaves it with madsim's.

use reprise_peers::spec::{self, Args};
use reprise_peers::{SIMULATORS, on_reprise, on_turmoil};

fn main() {
    let args = match Args::parse(&SIMULATORS, std::env::args().skip(1)) {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let runners: [spec::Runner<'_>; 2] =
        [("reprise", &on_reprise::run), ("turmoil", &on_turmoil::run)];
    if let Err(e) = spec::bench(&args, &runners) {
        eprintln!("peers: {e}");
        std::process::exit(1);
    }
}
