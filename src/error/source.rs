//! [`Source`]: the cause of an [`Error`](super::Error), kept opaque so that no dependency's
//! error type is part of the crate's public API (a major release of redis-rs or sqlx
//! would otherwise be one of ours too).

use std::fmt;
use std::sync::Arc;

/// The underlying cause of an [`Error`](super::Error): a driver's, a transport's or a
/// parser's error. Opaque on purpose: read it through [`std::error::Error::source`] (its
/// text, its own chain), never by type. Cloning shares the cause, so a cloned error keeps
/// its whole chain.
#[derive(Clone)]
pub struct Source(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Source {
    /// Wraps a third-party error.
    pub(crate) fn new(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(cause))
    }

    /// A cause that is only a message (no key, no URL in it).
    pub(crate) fn msg(text: impl Into<String>) -> Self {
        let boxed: Box<dyn std::error::Error + Send + Sync> = text.into().into();
        Self(Arc::from(boxed))
    }

    /// A cause already boxed (figment's or an I/O error, as the settings reader has it).
    #[cfg(feature = "settings")]
    pub(crate) fn boxed(cause: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Self(Arc::from(cause))
    }

    /// The cause as `T`, for the crate's own decisions (which failures reached Torn).
    #[cfg(feature = "torn")]
    pub(crate) fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

// Transparent: the chain goes on with the cause's own source, so the cause appears once.
impl std::error::Error for Source {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
