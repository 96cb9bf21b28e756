//! `e2e-sampler`: exactly the `spanprof-sidecar` command (flags and environment as the operator's
//! webhook sets them), for the container end-to-end test.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    spanprof_sidecar::cli::main()
}
