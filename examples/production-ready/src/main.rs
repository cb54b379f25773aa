//! `reprise-shop`: see [`reprise_shop::cli`] and `docs/production-service.md`.

fn main() -> std::process::ExitCode {
    reprise_shop::cli::main()
}
