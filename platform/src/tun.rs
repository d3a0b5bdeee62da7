//! TUN devices (placeholder while being written).

mod error;
pub use error::PlatformError;
