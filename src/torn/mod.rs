//! The Torn API client: keys as secrets, every error code typed, the limiter consulted before
//! every call.

mod access;
mod code;
mod key;

pub use access::AccessLevel;
pub use code::{ErrorClass, TornErrorCode};
pub use key::{ApiKey, KeyHash};
