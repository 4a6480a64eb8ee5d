//! Torn's paths and the JSON it answers, v1 and v2, for a key that passed every check.

use serde_json::{Map, Value, json};

use super::keys::SimKey;
use crate::identity::AccessLevel;
use crate::torn::TornErrorCode;

const WRONG_TYPE: TornErrorCode = TornErrorCode::new(3);
const WRONG_FIELDS: TornErrorCode = TornErrorCode::new(4);
const INCORRECT_ID: TornErrorCode = TornErrorCode::new(6);

/// Every selection the simulator serves, with the access it needs. The first of each section
/// is its default.
const SELECTIONS: &[(&str, &str, AccessLevel)] = &[
    ("user", "basic", AccessLevel::Public),
    ("user", "profile", AccessLevel::Public),
    ("user", "personalstats", AccessLevel::Public),
    ("user", "discord", AccessLevel::Public),
    ("user", "timestamp", AccessLevel::Public),
    ("user", "bars", AccessLevel::Limited),
    ("user", "battlestats", AccessLevel::Limited),
    ("user", "money", AccessLevel::Limited),
    ("user", "log", AccessLevel::Limited),
    ("user", "events", AccessLevel::Limited),
    ("user", "cooldowns", AccessLevel::Limited),
    ("faction", "basic", AccessLevel::Public),
    ("faction", "members", AccessLevel::Public),
    ("faction", "chain", AccessLevel::Public),
    ("faction", "attacks", AccessLevel::Limited),
    ("company", "profile", AccessLevel::Public),
    ("market", "itemmarket", AccessLevel::Public),
    ("market", "bazaar", AccessLevel::Public),
    ("torn", "items", AccessLevel::Public),
    ("torn", "timestamp", AccessLevel::Public),
    ("racing", "races", AccessLevel::Public),
    ("property", "property", AccessLevel::Public),
    ("key", "info", AccessLevel::Custom),
];

/// What a key may read. A custom key's rights are chosen selection by selection at Torn;
/// the simulator gives it what a public key reads.
fn may_read(key: AccessLevel, needed: AccessLevel) -> bool {
    let key = if key == AccessLevel::Custom {
        AccessLevel::Public
    } else {
        key
    };
    key >= needed
}

fn is_section(name: &str) -> bool {
    SELECTIONS.iter().any(|s| s.0 == name)
}

fn needed_access(section: &str, selection: &str) -> Option<AccessLevel> {
    SELECTIONS
        .iter()
        .find(|s| s.0 == section && s.1 == selection)
        .map(|s| s.2)
}

/// Answers `path` (with its query pairs) for `key`: the JSON, or the Torn error code.
pub(crate) fn route(
    path: &str,
    query: &[(String, String)],
    key: &SimKey,
) -> Result<Value, TornErrorCode> {
    let (v2, rest) = match path.strip_prefix("/v2") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => (true, rest),
        _ => (false, path),
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some((&section, args)) = segments.split_first() else {
        return Err(WRONG_TYPE);
    };
    if !is_section(section) {
        return Err(WRONG_TYPE);
    }
    let query_selections: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "selections")
        .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|s| !s.is_empty()))
        .collect();
    let (id, path_selection) = match args {
        [] => (None, None),
        [one] if !v2 || one.bytes().all(|b| b.is_ascii_digit()) => (Some(parse_id(one)?), None),
        [selection] => (None, Some(*selection)),
        [id, selection] if v2 => (Some(parse_id(id)?), Some(*selection)),
        _ => return Err(WRONG_FIELDS),
    };
    let selections: Vec<&str> = match path_selection {
        Some(s) => vec![s],
        None if !query_selections.is_empty() => query_selections,
        None => SELECTIONS
            .iter()
            .find(|s| s.0 == section)
            .map(|s| vec![s.1])
            .unwrap_or_default(),
    };
    let mut needs = Vec::with_capacity(selections.len());
    for selection in &selections {
        needs.push(needed_access(section, selection).ok_or(WRONG_FIELDS)?);
    }
    if needs.iter().any(|&n| !may_read(key.access, n)) {
        return Err(TornErrorCode::ACCESS_TOO_LOW);
    }
    let id = match (section, id) {
        ("user", None) => Some(key.owner.get()),
        (_, id) => id,
    };
    let mut out = Map::new();
    for selection in selections {
        let body = if v2 {
            v2_selection(section, selection, id, key)
        } else {
            v1_selection(section, selection, id, key)
        };
        if let Value::Object(fields) = body {
            out.extend(fields);
        }
    }
    Ok(Value::Object(out))
}

fn parse_id(raw: &str) -> Result<u64, TornErrorCode> {
    match raw.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(INCORRECT_ID),
    }
}

/// A v2 selection's answer: an object keyed by the selection's name (`basic` answers under
/// `profile`, as Torn's does).
fn v2_selection(section: &str, selection: &str, id: Option<u64>, key: &SimKey) -> Value {
    match (section, selection) {
        ("key", "info") => json!({ "info": {
            "selections": readable(key.access),
            "user": { "id": key.owner.get(), "faction_id": null },
            "access": {
                "level": key.access.number(),
                "type": key.access.torn_name(),
                "faction": false,
                "company": false,
            },
        }}),
        ("user", "basic") => json!({ "profile": profile(id.unwrap_or(0), false) }),
        ("user", "profile") => json!({ "profile": profile(id.unwrap_or(0), true) }),
        _ => json!({ selection: data(section, selection, id) }),
    }
}

/// A v1 selection's fields, which v1 merges into one flat object.
fn v1_selection(section: &str, selection: &str, id: Option<u64>, key: &SimKey) -> Value {
    match (section, selection) {
        ("key", "info") => json!({
            "access_level": key.access.number(),
            "access_type": key.access.torn_name(),
            "selections": readable(key.access),
        }),
        ("user", "basic" | "profile") => {
            let id = id.unwrap_or(0);
            let (name, level, gender) = person(id);
            json!({
                "player_id": id,
                "name": name,
                "level": level,
                "gender": gender,
                "status": {
                    "description": "Okay",
                    "details": "",
                    "state": "Okay",
                    "color": "green",
                    "until": 0,
                },
            })
        }
        _ => match data(section, selection, id) {
            obj @ Value::Object(_) => obj,
            other => json!({ selection: other }),
        },
    }
}

/// Every selection a key of this level may read, by section, as key info lists them.
fn readable(level: AccessLevel) -> Value {
    let mut out = Map::new();
    for &(section, selection, needed) in SELECTIONS {
        if may_read(level, needed) {
            out.entry(section)
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
                .expect("inserted as an array")
                .push(json!(selection));
        }
    }
    Value::Object(out)
}

/// A player's name, level and gender, stable for an id.
fn person(id: u64) -> (String, u64, &'static str) {
    let gender = ["Male", "Female", "Enby"][(id % 3) as usize];
    (format!("Player{id}"), 1 + id % 100, gender)
}

fn profile(id: u64, full: bool) -> Value {
    let (name, level, gender) = person(id);
    let mut p = json!({
        "id": id,
        "name": name,
        "level": level,
        "gender": gender,
        "status": {
            "description": "Okay",
            "details": null,
            "state": "Okay",
            "color": "green",
            "until": null,
        },
    });
    if full {
        p["rank"] = json!("Average Civilian");
        p["age"] = json!(365 + id % 3000);
        p["faction_id"] = Value::Null;
    }
    p
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Plausible data for the other selections, stable for an id.
fn data(section: &str, selection: &str, id: Option<u64>) -> Value {
    let n = id.unwrap_or(1);
    match (section, selection) {
        ("user", "personalstats") => json!({ "attacking": { "attacks": { "won": n % 5000 } } }),
        ("user", "discord") => json!({ "discord_id": null, "user_id": n }),
        ("user" | "torn", "timestamp") => json!(now_secs()),
        ("user", "bars") => {
            let bar = |current: u64, maximum: u64| json!({ "current": current, "maximum": maximum, "increment": 5, "interval": 600, "tick_time": 300, "full_time": 0 });
            json!({ "energy": bar(100, 150), "nerve": bar(n % 60, 60), "happy": bar(5000, 5000), "life": bar(750, 750), "chain": null })
        }
        ("user", "battlestats") => {
            let s = 1000 + n * 37 % 100_000;
            json!({
                "strength": { "value": s, "modifier": 0, "modifiers": [] },
                "defense": { "value": s + 1, "modifier": 0, "modifiers": [] },
                "speed": { "value": s + 2, "modifier": 0, "modifiers": [] },
                "dexterity": { "value": s + 3, "modifier": 0, "modifiers": [] },
                "total": 4 * s + 6,
            })
        }
        ("user", "money") => json!({
            "points": n % 1000,
            "wallet": n * 1009 % 10_000_000,
            "company": 0,
            "vault": 0,
            "cayman_bank": 0,
            "city_bank": { "amount": 0, "until": 0 },
            "faction": null,
            "daily_networth": n * 7919 % 1_000_000_000,
        }),
        ("user", "cooldowns") => json!({ "drug": 0, "medical": 0, "booster": 0 }),
        ("faction", "basic") => {
            json!({ "id": n, "name": format!("Faction{n}"), "tag": "SIM", "members": 25 + n % 75, "respect": n * 131 % 10_000_000 })
        }
        ("faction", "chain") => {
            json!({ "id": n, "current": 0, "max": 10, "timeout": 0, "modifier": 1.0, "cooldown": 0, "start": 0, "end": 0 })
        }
        ("company", "profile") => {
            json!({ "id": n, "name": format!("Company{n}"), "rating": 1 + n % 10 })
        }
        ("torn", "items") => json!([{ "id": 1, "name": "Hammer", "type": "Melee" }]),
        _ => json!([]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TornUserId;

    fn key(access: AccessLevel) -> SimKey {
        SimKey::new("AbCdEfGh12345678", TornUserId::new(4), access)
    }

    fn code(path: &str, access: AccessLevel) -> Option<u16> {
        route(path, &[], &key(access)).err().map(TornErrorCode::get)
    }

    #[test]
    fn v2_paths_answer_torns_shape() {
        let k = key(AccessLevel::Limited);
        let info = route("/v2/key/info", &[], &k).unwrap();
        assert_eq!(info["info"]["user"]["id"], 4);
        assert_eq!(info["info"]["access"]["level"], 3);
        assert_eq!(info["info"]["access"]["type"], "Limited Access");
        let me = route("/v2/user/basic", &[], &k).unwrap();
        assert_eq!(me["profile"]["id"], 4);
        assert_eq!(me["profile"]["name"], "Player4");
        let other = route("/v2/user/77/basic/", &[], &k).unwrap();
        assert_eq!(other["profile"]["id"], 77);
        assert_eq!(other["profile"]["status"]["state"], "Okay");
        assert!(route("/v2/user/77/battlestats", &[], &k).unwrap()["battlestats"].is_object());
        let q = [("selections".to_owned(), "basic,bars".to_owned())];
        let both = route("/v2/user", &q, &k).unwrap();
        assert!(
            both["profile"].is_object() && both["bars"].is_object(),
            "{both}"
        );
    }

    #[test]
    fn v1_paths_answer_torns_shape() {
        let k = key(AccessLevel::Full);
        let q = [("selections".to_owned(), "basic".to_owned())];
        let me = route("/user/", &q, &k).unwrap();
        assert_eq!(me["player_id"], 4);
        let other = route("/user/12", &q, &k).unwrap();
        assert_eq!(other["player_id"], 12);
        assert_eq!(other["name"], "Player12");
        let info = route("/key/", &[("selections".to_owned(), "info".to_owned())], &k).unwrap();
        assert_eq!(info["access_level"], 4);
        assert_eq!(info["access_type"], "Full Access");
        assert!(info["selections"]["user"].as_array().unwrap().len() > 3);
    }

    #[test]
    fn errors_follow_torn() {
        assert_eq!(code("/v2/nosuch/basic", AccessLevel::Full), Some(3));
        assert_eq!(code("/v2/", AccessLevel::Full), Some(3));
        assert_eq!(code("/nosuch/", AccessLevel::Full), Some(3));
        assert_eq!(code("/v2/user/abc/basic", AccessLevel::Full), Some(6));
        assert_eq!(code("/v2/user/0/basic", AccessLevel::Full), Some(6));
        assert_eq!(code("/user/abc", AccessLevel::Full), Some(6));
        assert_eq!(code("/v2/user/nosuch", AccessLevel::Full), Some(4));
        assert_eq!(code("/v2/user/1/2/3", AccessLevel::Full), Some(4));
        for sel in ["battlestats", "money", "bars", "log"] {
            let path = format!("/v2/user/{sel}");
            assert_eq!(code(&path, AccessLevel::Minimal), Some(16), "{sel}");
            assert_eq!(code(&path, AccessLevel::Limited), None, "{sel}");
        }
        assert_eq!(code("/v2/user/basic", AccessLevel::Custom), None);
        assert_eq!(code("/v2/key/info", AccessLevel::Custom), None);
        assert_eq!(code("/v2/user/money", AccessLevel::Custom), Some(16));
    }
}
