//! spanprof end-to-end tests (see `tests/`); the binaries in `src/bin` launch the parts.
#![forbid(unsafe_code)]
