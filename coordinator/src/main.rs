//! The `settle` binary: see [`settle_coordinator::cli`].

fn main() -> std::process::ExitCode {
    settle_coordinator::cli::main()
}
