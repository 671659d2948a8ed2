//! The `settle` binary's entry point, built into this package so that the process tests
//! (kill and restart) can start the real coordinator by path: cargo exposes only a package's
//! own binaries to its tests. It runs exactly what `settle` runs.

fn main() -> std::process::ExitCode {
    settle_coordinator::cli::main()
}
