//! The one reader of settings for every part of the crate: an optional TOML file whose keys
//! are the environment names, under the environment, which wins.
//!
//! One file configures the whole tool, so the file may hold any part's settings and each
//! part reads its own; a name no part knows is refused, because a typo must not silently
//! leave a default in force. Values are wiped when dropped (two of them are secrets), and a
//! syntax error names its line only: the parser's own message quotes the line, which may
//! hold a secret.

use std::collections::BTreeMap;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The environment variable naming the settings file.
pub(crate) const CONFIG_FILE: &str = "TORN_QUOTA_CONFIG";

/// Every setting any part of the crate reads.
fn known() -> impl Iterator<Item = &'static str> + Clone {
    [
        crate::limiter::SETTINGS,
        crate::torn::CLIENT_SETTINGS,
        #[cfg(feature = "vault")]
        crate::vault::VAULT_SETTINGS,
    ]
    .into_iter()
    .flatten()
    .copied()
    .chain(std::iter::once(CONFIG_FILE))
}

/// One part's settings: the file's values, overridden by the environment's for `own`.
pub(crate) struct Sources(BTreeMap<&'static str, Zeroizing<String>>);

impl Sources {
    /// Reads `file` (when given), then `env` for each of `own`, which wins.
    pub(crate) fn read(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        own: &[&'static str],
    ) -> Result<Self> {
        let mut values = match file {
            Some(path) => read_toml(path)?,
            None => BTreeMap::new(),
        };
        for name in own {
            if let Some(v) = env(name) {
                values.insert(name, Zeroizing::new(v));
            }
        }
        Ok(Self(values))
    }

    /// A setting's value, trimmed; `None` when neither source sets it.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim())
    }
}

fn read_toml(path: &Path) -> Result<BTreeMap<&'static str, Zeroizing<String>>> {
    let file_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::ConfigFile {
        path: path.display().to_string(),
        source: e,
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
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let Some(name) = known().find(|n| *n == key) else {
            return Err(file_err(
                format!(
                    "unknown setting '{key}'; known settings: {}",
                    known().collect::<Vec<_>>().join(", ")
                )
                .into(),
            ));
        };
        out.insert(name, Zeroizing::new(flatten(name, value)?));
    }
    Ok(out)
}

/// A TOML value as the environment would spell it: a table of integers (per-user limits)
/// as `key=value,...`, a list of strings (cluster URLs) comma-separated.
fn flatten(name: &'static str, value: toml::Value) -> Result<String> {
    let invalid = |reason: String| Error::Config {
        setting: name,
        reason,
    };
    Ok(match value {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| match v {
                toml::Value::Integer(i) => Ok(format!("{k}={i}")),
                _ => Err(invalid(format!("the value for {k} is not an integer"))),
            })
            .collect::<Result<Vec<_>>>()?
            .join(","),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                _ => Err(invalid("expected a list of strings".into())),
            })
            .collect::<Result<Vec<_>>>()?
            .join(","),
        other => {
            return Err(invalid(format!(
                "expected a string, an integer or a boolean, got a {}",
                other.type_str()
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_environment_wins_over_the_file_for_its_own_names() {
        let f = file("TORN_QUOTA_LIMIT = 7\nTORN_QUOTA_WINDOW_MS = 1000\n");
        let env = |n: &str| (n == "TORN_QUOTA_LIMIT").then(|| " 9 ".to_owned());
        let s = Sources::read(Some(f.get()), env, &["TORN_QUOTA_LIMIT"]).unwrap();
        assert_eq!(s.get("TORN_QUOTA_LIMIT"), Some("9"));
        assert_eq!(s.get("TORN_QUOTA_WINDOW_MS"), Some("1000"));
        assert_eq!(s.get("REDIS_URL"), None);
    }

    #[test]
    fn one_file_holds_every_parts_settings_and_refuses_typos() {
        let f = file(
            "TORN_QUOTA_LIMIT = 7\nTORN_API_MAX_ATTEMPTS = 2\nDATABASE_URL = \"postgres://x\"\n\
             REDIS_CLUSTER_URLS = [\"redis://a:1\", \"redis://b:2\"]\n\
             [TORN_QUOTA_USER_LIMITS]\n4 = 50\n",
        );
        let s = Sources::read(Some(f.get()), |_| None, &[]).unwrap();
        assert_eq!(s.get("TORN_API_MAX_ATTEMPTS"), Some("2"));
        assert_eq!(s.get("REDIS_CLUSTER_URLS"), Some("redis://a:1,redis://b:2"));
        assert_eq!(s.get("TORN_QUOTA_USER_LIMITS"), Some("4=50"));

        let typo = file("TORN_QUOTA_LIMTI = 7\n");
        let err = Sources::read(Some(typo.get()), |_| None, &[])
            .err()
            .unwrap();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
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
            let err = Sources::read(Some(f.get()), |_| None, &[]).err().unwrap();
            let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(
                chain.contains(&format!("duplicate key at line {line}")),
                "{text:?}: {chain}"
            );
        }
    }

    #[test]
    fn a_syntax_error_names_its_line_and_never_quotes_it() {
        let f = file("TORN_QUOTA_LIMIT = 7\nTORN_QUOTA_ENCRYPTION_KEY = \"s3cret\n");
        let err = Sources::read(Some(f.get()), |_| None, &[]).err().unwrap();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("line 2"), "{chain}");
        assert!(!chain.contains("s3cret"), "{chain}");
    }
}
