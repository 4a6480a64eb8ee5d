//! The Lua scripts of `lua/`, as Redis runs them, for callers in other languages or tools
//! that load them themselves.
//!
//! Every script but `acquire.lua` starts from `lua/prelude.lua` (argument checks, Redis
//! `TIME` in milliseconds, decoding the grant log), and this module is the one place that
//! puts the prelude before them: each constant here is runnable as it is. `acquire.lua`
//! is the exception because other languages call the file as shipped (examples/node
//! does): it carries the prelude verbatim between its `@prelude-begin` and `@prelude-end`
//! lines, and a test below fails when that copy and `lua/prelude.lua` differ by one byte.
//! The same tests fail when a script repeats code the prelude provides.

/// `lua/prelude.lua`: what the scripts share. Not a script: defines functions and
/// constants and returns nothing.
pub const PRELUDE: &str = include_str!("../lua/prelude.lua");

/// A script's runnable text: the prelude, then the script.
macro_rules! with_prelude {
    ($file:literal) => {
        concat!(
            include_str!("../lua/prelude.lua"),
            include_str!(concat!("../lua/", $file))
        )
    };
}

/// `lua/acquire.lua`: take units from a bucket. Standalone, as shipped (it carries the
/// prelude itself).
pub const ACQUIRE: &str = include_str!("../lua/acquire.lua");
/// `lua/acquire_many.lua` as shipped: many acquire decisions in one call. Not standalone:
/// run [`acquire_many_source`].
pub const ACQUIRE_MANY: &str = include_str!("../lua/acquire_many.lua");
/// `lua/status.lua` after the prelude: read a bucket.
pub const STATUS: &str = with_prelude!("status.lua");
/// `lua/penalize.lua` after the prelude: mark a bucket full for a while.
pub const PENALIZE: &str = with_prelude!("penalize.lua");
/// `lua/refund.lua` after the prelude: give back a grant never sent.
pub const REFUND: &str = with_prelude!("refund.lua");
/// `lua/settle.lua` after the prelude: restamp provisional grants with the time their
/// calls were answered.
pub const SETTLE: &str = with_prelude!("settle.lua");
/// `lua/record.lua` after the prelude: record units Torn counted although nobody asked
/// first.
pub const RECORD: &str = with_prelude!("record.lua");
/// `lua/restore.lua` after the prelude: write a process's journal of grants back into a
/// bucket Redis lost, idempotently by grant id.
pub const RESTORE: &str = with_prelude!("restore.lua");
/// `lua/release.lua` after the prelude: delete a lease only while it holds the caller's
/// token.
pub const RELEASE: &str = with_prelude!("release.lua");
/// `lua/epoch.lua` after the prelude: a key space's state epoch and the server's run_id,
/// which together tell that Redis lost writes.
pub const EPOCH: &str = with_prelude!("epoch.lua");

const PRELUDE_END: &str = "-- @prelude-end\n";
const SHARED_END: &str = "-- @shared-end";

/// The runnable text of `acquire_many.lua`: the prelude, then `acquire.lua`'s shared part
/// (from its `@prelude-end` line to its `@shared-end` line: the one `decide` function both
/// scripts run), then `acquire_many.lua`.
pub fn acquire_many_source() -> String {
    format!("{PRELUDE}{}\n{ACQUIRE_MANY}", acquire_shared())
}

/// `acquire.lua` between its prelude copy and its `@shared-end` line.
fn acquire_shared() -> &'static str {
    let from = ACQUIRE
        .find(PRELUDE_END)
        .map_or(0, |i| i + PRELUDE_END.len());
    let to = ACQUIRE.find(SHARED_END).unwrap_or(ACQUIRE.len());
    &ACQUIRE[from..to]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where acquire.lua carries its copy of the prelude: from `@prelude-begin` to the
    /// end of the `@prelude-end` line.
    fn prelude_copy() -> (usize, usize) {
        let begin = ACQUIRE
            .find("-- @prelude-begin")
            .expect("acquire.lua has @prelude-begin");
        let end = ACQUIRE
            .find(PRELUDE_END)
            .expect("acquire.lua has @prelude-end")
            + PRELUDE_END.len();
        (begin, end)
    }

    /// Each script file's own text, with acquire.lua's prelude copy cut out.
    fn own_texts() -> Vec<(&'static str, String)> {
        let (begin, end) = prelude_copy();
        vec![
            (
                "acquire.lua",
                format!("{}{}", &ACQUIRE[..begin], &ACQUIRE[end..]),
            ),
            ("acquire_many.lua", ACQUIRE_MANY.to_owned()),
            ("status.lua", include_str!("../lua/status.lua").to_owned()),
            (
                "penalize.lua",
                include_str!("../lua/penalize.lua").to_owned(),
            ),
            ("refund.lua", include_str!("../lua/refund.lua").to_owned()),
            ("settle.lua", include_str!("../lua/settle.lua").to_owned()),
            ("record.lua", include_str!("../lua/record.lua").to_owned()),
            ("restore.lua", include_str!("../lua/restore.lua").to_owned()),
            ("release.lua", include_str!("../lua/release.lua").to_owned()),
            ("epoch.lua", include_str!("../lua/epoch.lua").to_owned()),
        ]
    }

    #[test]
    fn acquire_carries_the_prelude_byte_for_byte() {
        let (begin, end) = prelude_copy();
        assert_eq!(
            &ACQUIRE[begin..end],
            PRELUDE,
            "acquire.lua's copy of the prelude differs from lua/prelude.lua: copy the file in"
        );
    }

    #[test]
    fn no_script_redefines_what_the_prelude_provides() {
        // The prelude's names: `local function NAME(` and `local A, B = ...`.
        let mut names = Vec::new();
        for line in PRELUDE.lines() {
            if let Some(rest) = line.strip_prefix("local function ") {
                names.push(rest.split('(').next().unwrap().trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("local ") {
                let lhs = rest.split('=').next().unwrap();
                names.extend(lhs.split(',').map(|n| n.trim().to_owned()));
            }
        }
        assert!(names.len() >= 10, "found only {names:?} in the prelude");
        for (script, text) in own_texts() {
            for name in &names {
                for line in text.lines() {
                    let code = line.split("--").next().unwrap();
                    let declared = code
                        .trim_start()
                        .strip_prefix("local ")
                        .is_some_and(|rest| {
                            let rest = rest.strip_prefix("function ").unwrap_or(rest);
                            rest.split(['=', '('])
                                .next()
                                .unwrap()
                                .split(',')
                                .any(|n| n.trim() == name)
                        });
                    assert!(
                        !declared,
                        "{script} declares the prelude's `{name}` again: {line}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_script_repeats_a_line_of_the_prelude() {
        // Every code line of the prelude long enough to say something.
        let lines: Vec<&str> = PRELUDE
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("--") && l.len() >= 24)
            // An idiom, not the prelude's logic: every error message starts so.
            .filter(|l| *l != "return redis.error_reply(string.format(")
            .collect();
        assert!(lines.len() >= 10, "found only {lines:?} in the prelude");
        for (script, text) in own_texts() {
            for line in text.lines().map(str::trim) {
                assert!(
                    !lines.contains(&line),
                    "{script} repeats the prelude's `{line}`: use the prelude's function"
                );
            }
            // The usual ways to copy the TIME conversion or the integer check.
            for pattern in [
                "redis.call(\"TIME\")",
                "tonumber(t[1])",
                "string.find(raw, \"^%d+$\")",
            ] {
                assert!(
                    !text.contains(pattern),
                    "{script} repeats the prelude: {pattern}"
                );
            }
        }
    }

    #[test]
    fn every_runnable_text_starts_with_the_prelude() {
        for text in [
            STATUS,
            PENALIZE,
            REFUND,
            SETTLE,
            RECORD,
            RESTORE,
            RELEASE,
            EPOCH,
            &acquire_many_source(),
        ] {
            assert!(text.starts_with(PRELUDE));
            assert_eq!(text.matches("-- @prelude-begin").count(), 1);
        }
        assert_eq!(ACQUIRE.matches("-- @prelude-begin").count(), 1);
    }
}
