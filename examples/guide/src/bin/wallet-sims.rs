//! `wallet-sims list | run | sweep | check-determinism | shrink | plan` for this crate's
//! scenarios: one call to `reprise_runner::main`.

use std::process::ExitCode;

use reprise_runner::Registry;
use wallets::scenario::Wallets;

fn main() -> ExitCode {
    reprise_runner::main(
        Registry::new("wallet-sims")
            .scenario(Wallets::correct())
            .scenario(Wallets::without_inbox()),
    )
}
