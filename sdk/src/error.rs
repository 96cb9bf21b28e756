//! The SDK's one error type.

/// Why the layer could not be set up. Once set up, it never fails the app: what it cannot
/// publish is dropped and counted in the channel file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The channel file could not be created in the context directory.
    #[error("span-context channel: {0}")]
    Channel(#[from] spanprof_channel::Error),
    /// An environment variable or builder setting has an unusable value.
    #[error("{name}: {reason}")]
    Config { name: &'static str, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
