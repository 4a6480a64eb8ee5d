//! Who and what a call is about: the Torn player Torn limits ([`TornUserId`]), the tool's
//! account that stored a key ([`AppUserId`]), the key itself as a secret ([`ApiKey`]) and
//! the hash that names it everywhere else ([`KeyHash`]), and what Torn says about a key
//! ([`KeyInfo`], [`AccessLevel`]). Every part of the crate speaks these types; each has
//! its one home here and is re-exported at the crate root.

mod access_level;
mod api_key;
// A UUID account, which only the vault stores.
#[cfg(feature = "vault")]
mod app_user_id;
mod key_hash;
mod key_info;
mod torn_user_id;

pub use access_level::AccessLevel;
pub use api_key::ApiKey;
#[cfg(feature = "vault")]
pub use app_user_id::AppUserId;
pub use key_hash::KeyHash;
pub use key_info::KeyInfo;
pub use torn_user_id::TornUserId;
