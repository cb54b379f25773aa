//! `reprise-load`: see the library's documentation (`load/src/lib.rs`).

fn main() -> std::process::ExitCode {
    reprise_load::main()
}
