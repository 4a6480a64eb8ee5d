//! How each kind of setting is read: from the environment every value is a string, from
//! the TOML file it may be an integer, a boolean, a list or a table; both spell the same
//! values. A refusal says what was expected and, for a value that is no secret, what came;
//! [`to_error`] adds the setting's name.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::error::{Actual, Kind};
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::TornUserId;
use crate::error::Error;
use crate::limiter::Mode;
use crate::settings::{RedisDownPolicy, Settings};

/// A secret setting's value (a URL that may carry a password, a key, a token): wiped when
/// dropped, and shown by `Debug` as `***`.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Secret(#[serde(serialize_with = "expose")] Zeroizing<String>);

fn expose<S: serde::Serializer>(v: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }
    /// The value itself: to hand to the code that uses it, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One scalar as text: a string as it is, an integer, a float or a boolean as the
/// environment would spell it. Wiped when dropped, since it may be a secret.
struct Raw(Zeroizing<String>);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw(Zeroizing::new(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
                Ok(Raw(Zeroizing::new(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw(Zeroizing::new(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw(Zeroizing::new(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw(Zeroizing::new(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw(Zeroizing::new(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

impl Raw {
    /// The value with blanks around it removed (as operators' files and shells leave them).
    fn trimmed(&self) -> &str {
        self.0.trim()
    }
}

fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
    Raw::deserialize(d)
}

/// A number: `TORN_QUOTA_LIMIT`, the counts, the attempts.
pub(super) fn number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let raw = raw(d)?;
    let v = raw.trimmed();
    v.parse().map(Some).map_err(|e: T::Err| {
        de::Error::custom(format!("expected a positive integer, got '{v}' ({e})"))
    })
}

/// A duration in milliseconds, at least 1.
pub(super) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let raw = raw(d)?;
    let v = raw.trimmed();
    match v.parse::<u64>() {
        Ok(ms) if ms >= 1 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(de::Error::custom(format!(
            "expected a number of milliseconds (1 or more), got '{v}'"
        ))),
    }
}

/// A duration in milliseconds where 0 means none (a margin, a timeout turned off).
pub(super) fn millis_or_zero<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let raw = raw(d)?;
    let v = raw.trimmed();
    v.parse::<u64>()
        .map(|ms| Some(Duration::from_millis(ms)))
        .map_err(|_| {
            de::Error::custom(format!(
                "expected a number of milliseconds (0 or more), got '{v}'"
            ))
        })
}

/// Text, trimmed: a URL, a name, a prefix.
pub(super) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(raw(d)?.trimmed().to_owned()))
}

/// A path to a file.
pub(super) fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Some(PathBuf::from(raw(d)?.trimmed())))
}

/// A secret, trimmed; empty counts as unset (an empty `DATABASE_URL` from a template is no
/// database).
pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    let raw = raw(d)?;
    let v = raw.trimmed();
    Ok((!v.is_empty()).then(|| Secret::new(v)))
}

/// A secret, trimmed, kept even when empty: an empty `REDIS_URL` is refused by the
/// builder, as it always was, rather than silently meaning the default.
pub(super) fn secret_kept<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Some(Secret::new(raw(d)?.trimmed())))
}

/// A list of URLs (which may carry passwords): comma-separated, or a TOML list of strings.
/// Blanks around each are dropped; at least one.
pub(super) fn secret_list<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Secret>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Secret>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("URLs separated by commas, or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(Secret::new)
                .collect())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<Raw>()? {
                let v = item.trimmed();
                if !v.is_empty() {
                    out.push(Secret::new(v));
                }
            }
            Ok(out)
        }
    }
    let urls = d.deserialize_any(V)?;
    if urls.is_empty() {
        return Err(de::Error::custom(
            "expected node URLs separated by commas, e.g. \
             redis://10.0.0.1:7000,redis://10.0.0.2:7000; got none",
        ));
    }
    Ok(Some(urls))
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
pub(super) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let raw = raw(d)?;
    let v = raw.trimmed();
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" => Ok(Some(false)),
        _ => Err(de::Error::custom(format!(
            "expected true or false, got '{v}'"
        ))),
    }
}

/// `legacy`, `shadow` or `per-user`.
pub(super) fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mode>, D::Error> {
    let raw = raw(d)?;
    raw.trimmed().parse().map(Some).map_err(|e| match e {
        Error::Config { reason, .. } => de::Error::custom(reason),
        other => de::Error::custom(other),
    })
}

/// `fail` or `local`.
pub(super) fn redis_down<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<RedisDownPolicy>, D::Error> {
    let raw = raw(d)?;
    match raw.trimmed() {
        "fail" => Ok(Some(RedisDownPolicy::Fail)),
        "local" => Ok(Some(RedisDownPolicy::Local)),
        other => Err(de::Error::custom(format!(
            "expected fail or local, got '{other}'"
        ))),
    }
}

/// A whole number from 0 to 100; a trailing `%` is allowed, since operators write it.
pub(super) fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    let raw = raw(d)?;
    let v = raw.trimmed();
    let digits = v.strip_suffix('%').unwrap_or(v).trim();
    match digits.parse::<u8>() {
        Ok(p) if p <= 100 => Ok(Some(p)),
        _ => Err(de::Error::custom(format!(
            "expected a whole number from 0 to 100, got '{v}'"
        ))),
    }
}

/// An address to listen on, e.g. `127.0.0.1:8080`.
pub(super) fn address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let raw = raw(d)?;
    let v = raw.trimmed();
    v.parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "expected an address and port such as 127.0.0.1:8080, got '{v}'"
        ))
    })
}

/// Per-user limits: `ID=LIMIT` pairs separated by commas, or a TOML table `ID = LIMIT`. An
/// id given twice is refused: which limit was meant is anyone's guess.
pub(super) fn user_limits<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<(TornUserId, NonZeroU32)>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("ID=LIMIT pairs separated by commas, or a table of ID = LIMIT")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
            let mut pairs = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, Raw>()? {
                pairs.push(format!("{k}={}", v.trimmed()));
            }
            Ok(pairs.join(","))
        }
    }
    let text = d.deserialize_any(V)?;
    parse_user_limits(&text)
        .map(Some)
        .map_err(de::Error::custom)
}

fn parse_user_limits(raw: &str) -> Result<Vec<(TornUserId, NonZeroU32)>, String> {
    let bad = |part: &str| {
        format!("expected ID=LIMIT pairs separated by commas (LIMIT >= 1), got '{part}'")
    };
    let mut pairs: Vec<(TornUserId, NonZeroU32)> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, limit) = part.split_once('=').ok_or_else(|| bad(part))?;
        let id: u64 = id.trim().parse().map_err(|_| bad(part))?;
        let limit: NonZeroU32 = limit.trim().parse().map_err(|_| bad(part))?;
        let user = TornUserId::new(id);
        if pairs.iter().any(|(u, _)| *u == user) {
            return Err(format!("user {user} is given twice"));
        }
        pairs.push((user, limit));
    }
    Ok(pairs)
}

/// The field names of a struct, as its `Deserialize` announces them: the one list of
/// setting names, so that no other list can drift from the struct.
pub(super) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut names));
    names
}

/// figment's error as the crate's: [`Error::Config`] naming the setting, or, for a name no
/// setting has, [`Error::ConfigFile`]. A value is never quoted from figment's own text (it
/// may be a secret): the reasons above quote only what they know is no secret.
pub(super) fn to_error(e: &figment::Error, file: Option<&Path>) -> Error {
    let name = e.path.first().map(String::as_str).unwrap_or_default();
    if let Kind::UnknownField(key, _) = &e.kind {
        return super::file::unknown(file, key, Settings::names());
    }
    let setting = Settings::names()
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("unknown");
    let reason = match &e.kind {
        Kind::Message(m) => m.clone(),
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("expected {expected}, got {}", kind_of(actual))
        }
        other => {
            // The remaining kinds (lengths, variants, missing fields) quote no value.
            other.to_string()
        }
    };
    Error::Config { setting, reason }
}

/// What kind of value came, never the value itself.
fn kind_of(actual: &Actual) -> &'static str {
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "another kind of value",
    }
}
