//! The `redis::Script` set: each script's runnable text (see [`crate::lua`]) and SHA-1,
//! hashed once per process, and the `EVALSHA`-then-`EVAL` call that runs one.

use std::sync::LazyLock;

use redis::{ErrorKind, FromRedisValue, Script, ServerErrorKind, ToRedisArgs};

use super::connect::Conn;

/// The scripts, hashed once per process. [`Lua::eval`] sends `EVALSHA` and falls back to
/// `EVAL` only when Redis answers `NOSCRIPT`.
pub(super) struct Scripts {
    pub(super) acquire: Lua,
    pub(super) acquire_many: Lua,
    pub(super) status: Lua,
    pub(super) penalize: Lua,
    pub(super) refund: Lua,
    pub(super) settle: Lua,
    pub(super) record: Lua,
    pub(super) restore: Lua,
    pub(super) release: Lua,
    pub(super) epoch: Lua,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire: Lua::new(crate::lua::ACQUIRE.to_owned()),
    acquire_many: Lua::new(crate::lua::acquire_many_source()),
    status: Lua::new(crate::lua::STATUS.to_owned()),
    penalize: Lua::new(crate::lua::PENALIZE.to_owned()),
    refund: Lua::new(crate::lua::REFUND.to_owned()),
    settle: Lua::new(crate::lua::SETTLE.to_owned()),
    record: Lua::new(crate::lua::RECORD.to_owned()),
    restore: Lua::new(crate::lua::RESTORE.to_owned()),
    release: Lua::new(crate::lua::RELEASE.to_owned()),
    epoch: Lua::new(crate::lua::EPOCH.to_owned()),
});

/// One script: its text and SHA-1.
pub(super) struct Lua {
    code: String,
    hash: String,
}

impl Lua {
    fn new(code: String) -> Self {
        let hash = Script::new(&code).get_hash().to_owned();
        Self { code, hash }
    }

    /// Runs the script with `keys` and `args`: `EVALSHA`, and on `NOSCRIPT` once more as
    /// `EVAL`, which loads the script on the node that answered (on a cluster, the node
    /// owning the keys' slot) and counts a reload.
    pub(super) async fn eval<T, K, A>(
        &self,
        conn: &mut Conn,
        keys: &[K],
        args: &[A],
    ) -> redis::RedisResult<T>
    where
        T: FromRedisValue,
        K: ToRedisArgs,
        A: ToRedisArgs,
    {
        let call = |verb: &str, script: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(script).arg(keys.len());
            for k in keys {
                cmd.arg(k);
            }
            for a in args {
                cmd.arg(a);
            }
            cmd
        };
        match call("EVALSHA", &self.hash).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                metrics::counter!("torn_quota_redis_noscript_reloads_total").increment(1);
                call("EVAL", &self.code).query_async(conn).await
            }
            other => other,
        }
    }
}
