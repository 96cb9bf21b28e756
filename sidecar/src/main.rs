//! `spanprof-sidecar`: the sampler's command (see `spanprof_sidecar::cli`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    spanprof_sidecar::cli::main()
}
