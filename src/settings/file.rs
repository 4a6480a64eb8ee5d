//! The settings file: TOML whose keys are the environment names. Read here rather than by
//! figment's own TOML provider because the parser's messages quote the line they fail on,
//! which may hold a secret: a syntax error names its line only.

use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result, Source};

/// The file's table, every key one of `names`; a name no setting has is refused, because a
/// typo must not silently leave a default in force.
pub(super) fn read(path: &Path, names: &[&str]) -> Result<toml::Table> {
    let file_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::ConfigFile {
        path: path.display().to_string(),
        source: Source::boxed(e),
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file_err(Box::new(e)))?);
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // The line the error starts on: one more than the line breaks before it (a span
        // at the very start of a line belongs to that line, not to the one before).
        let line = e.span().map_or(0, |s| {
            let start = s.start.min(text.len());
            text[..start].matches('\n').count() + 1
        });
        // The parser's own message may quote a value (a secret); a duplicate key's names
        // only the key, which is worth saying.
        let what = if e.message().starts_with("duplicate key") {
            "duplicate key"
        } else {
            "TOML syntax error"
        };
        file_err(format!("{what} at line {line}").into())
    })?;
    if let Some(key) = table.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(unknown(Some(path), key, names));
    }
    Ok(table)
}

/// The refusal of a name no setting has, listing the ones there are.
pub(super) fn unknown(path: Option<&Path>, key: &str, names: &[&str]) -> Error {
    Error::ConfigFile {
        path: path.map_or_else(|| "settings".to_owned(), |p| p.display().to_string()),
        source: Source::msg(format!(
            "unknown setting '{key}'; known settings: {}",
            names.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Secret, Settings};

    fn file(text: &str) -> tempfile_path::Path {
        tempfile_path::Path::new(text)
    }

    /// A file in the temp dir, removed on drop.
    mod tempfile_path {
        pub(crate) struct Path(std::path::PathBuf);
        impl Path {
            pub(crate) fn new(text: &str) -> Self {
                let p = std::env::temp_dir().join(format!(
                    "tq-settings-{}-{}.toml",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::write(&p, text).unwrap();
                Self(p)
            }
            pub(crate) fn get(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn read(file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        Settings::from_sources(Some(file), env)
    }

    /// The error and its causes on one line, as the binary prints them.
    fn chain(err: &Error) -> String {
        match std::error::Error::source(err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        }
    }

    #[test]
    fn the_environment_wins_over_the_file_for_its_own_names() {
        let f = file("TORN_QUOTA_LIMIT = 7\nTORN_QUOTA_WINDOW_MS = 1000\n");
        let env = |n: &str| (n == "TORN_QUOTA_LIMIT").then(|| " 9 ".to_owned());
        let s = read(f.get(), env).unwrap();
        assert_eq!(s.torn_quota_limit.map(std::num::NonZeroU32::get), Some(9));
        assert_eq!(
            s.torn_quota_window_ms,
            Some(std::time::Duration::from_secs(1))
        );
        assert!(s.redis_url.is_none());
    }

    #[test]
    fn one_file_holds_every_parts_settings_and_refuses_typos() {
        let f = file(
            "TORN_QUOTA_LIMIT = 7\nTORN_API_MAX_ATTEMPTS = 2\nDATABASE_URL = \"postgres://x\"\n\
             REDIS_CLUSTER_URLS = [\"redis://a:1\", \"redis://b:2\"]\n\
             [TORN_QUOTA_USER_LIMITS]\n4 = 50\n",
        );
        let s = read(f.get(), |_| None).unwrap();
        assert_eq!(s.torn_api_max_attempts, Some(2));
        let urls: Vec<&str> = s
            .redis_cluster_urls
            .iter()
            .flatten()
            .map(Secret::expose)
            .collect();
        assert_eq!(urls, ["redis://a:1", "redis://b:2"]);
        let limits = s.torn_quota_user_limits.unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!((limits[0].0.get(), limits[0].1.get()), (4, 50));

        let typo = file("TORN_QUOTA_LIMTI = 7\n");
        let err = read(typo.get(), |_| None).err().unwrap();
        let chain = chain(&err);
        assert!(
            chain.contains("unknown setting 'TORN_QUOTA_LIMTI'"),
            "{chain}"
        );
    }

    #[test]
    fn a_duplicate_key_is_reported_at_its_own_line() {
        for (text, line) in [
            (
                "TORN_QUOTA_LIMIT = 7\nTORN_QUOTA_WINDOW_MS = 1000\n\nTORN_QUOTA_LIMIT = 8\n",
                4,
            ),
            ("TORN_QUOTA_LIMIT = 7\nTORN_QUOTA_LIMIT = 8", 2),
            ("[TORN_QUOTA_USER_LIMITS]\n4 = 50\n5 = 1\n4 = 60\n", 4),
        ] {
            let f = file(text);
            let err = read(f.get(), |_| None).err().unwrap();
            let chain = chain(&err);
            assert!(
                chain.contains(&format!("duplicate key at line {line}")),
                "{text:?}: {chain}"
            );
        }
    }

    #[test]
    fn a_syntax_error_names_its_line_and_never_quotes_it() {
        let f = file("TORN_QUOTA_LIMIT = 7\nTORN_QUOTA_ENCRYPTION_KEY = \"s3cret\n");
        let err = read(f.get(), |_| None).err().unwrap();
        let chain = chain(&err);
        assert!(chain.contains("line 2"), "{chain}");
        assert!(!chain.contains("s3cret"), "{chain}");
    }
}
