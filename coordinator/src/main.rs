//! The `settle` binary: see [`settle_coordinator::cli`].

/// mimalloc instead of the system allocator: a coordinator's work is many small, short-lived
/// allocations spread over the runtime's threads (requests, rows, answers), where glibc's
/// allocator spent a seventh of the coordinator's CPU time freeing memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    settle_coordinator::cli::main()
}
