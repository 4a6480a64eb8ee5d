//! A fixed environment for the configuration tests of every part: each reads its settings
//! through [`Settings::from_sources`](super::Settings::from_sources) with this as `env`, so
//! no test depends on, or changes, the process's own environment.

/// The environment made of `pairs`; a name not among them is unset.
pub(crate) fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}
