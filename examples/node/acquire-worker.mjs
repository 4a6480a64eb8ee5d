// acquire-worker.mjs: a Node process sharing torn-quota's per-user buckets by calling
// lua/acquire.lua itself, with nothing of the Rust crate but the script and the key names.
//
// It hammers the given Torn user ids until a deadline, several concurrent callers per user,
// and prints one line per grant on stdout, as tests/oracle.rs's Rust workers do:
//
//   <torn user id> <redis_ms> <send_us> <recv_us>
//
// redis_ms is the decision's Redis time from the reply (acquire.lua's ARGV[5] = "1"), the one
// clock every process shares; send_us and recv_us are this process's wall clock (µs since the
// Unix epoch) around the call. tests/node_interop.rs runs it beside Rust workers on the same
// users and checks every window. Run it by hand with:
//
//   node examples/node/acquire-worker.mjs --users 4,5 --limit 100 --window-ms 60000 --run-ms 5000
//
// Options (all optional): --prefix (default "tq", the crate's default key prefix),
// --users (comma-separated Torn user ids, default 4), --limit (default TORN_QUOTA_LIMIT or
// 100), --window-ms (default TORN_QUOTA_WINDOW_MS or 60000), --run-ms (default 3000),
// --tasks-per-user (default 3), --start-us (wall-clock µs to start at, so that several
// processes start together). Redis is REDIS_URL (default redis://127.0.0.1:6379).

import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";

const SCRIPT = new URL("../../lua/acquire.lua", import.meta.url);

function fail(message) {
  process.stderr.write(`acquire-worker: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    prefix: "tq",
    users: "4",
    limit: process.env.TORN_QUOTA_LIMIT ?? "100",
    "window-ms": process.env.TORN_QUOTA_WINDOW_MS ?? "60000",
    "run-ms": "3000",
    "tasks-per-user": "3",
    "start-us": "0",
  };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    if (!(name in opts) || argv[i + 1] === undefined) fail(`unknown or valueless option ${argv[i]}`);
    opts[name] = argv[i + 1];
  }
  const int = (name, min) => {
    const raw = opts[name];
    if (!/^\d+$/.test(raw) || Number(raw) < min || !Number.isSafeInteger(Number(raw))) {
      fail(`--${name} must be an integer >= ${min}, got '${raw}'`);
    }
    return Number(raw);
  };
  // The crate refuses braces and spaces in a prefix: they would break the {hash tag}.
  if (opts.prefix === "" || /[{} ]/.test(opts.prefix)) fail(`bad --prefix '${opts.prefix}'`);
  const users = opts.users.split(",").map((u) => {
    // Kept as text: a Torn id is a u64 in the key name, and must not pass through a float.
    if (!/^\d+$/.test(u)) fail(`--users must be comma-separated Torn user ids, got '${u}'`);
    return u.replace(/^0+(?=\d)/, "");
  });
  return {
    prefix: opts.prefix,
    users,
    limit: int("limit", 1),
    windowMs: int("window-ms", 1),
    runMs: int("run-ms", 0),
    tasksPerUser: int("tasks-per-user", 1),
    startUs: int("start-us", 0),
  };
}

// The bucket's state key exactly as src/limiter/keys.rs builds it: <prefix>:{u<id>}:log.
// Every key of one user shares the {u<id>} hash tag, so the script runs on one cluster slot.
function stateKey(prefix, user) {
  return `${prefix}:{u${user}}:log`;
}

// Wall clock in µs since the epoch, with sub-ms precision (Date.now() has only ms).
function epochUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const redis = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379", {
    // Fail a call rather than queue it for ever while Redis is away.
    maxRetriesPerRequest: 1,
    enableOfflineQueue: true,
  });
  redis.on("error", () => {}); // each call reports its own error; no unhandled event
  // defineCommand sends EVALSHA, and EVAL when the connection has not loaded the script yet
  // or Redis answers NOSCRIPT (a restart, a SCRIPT FLUSH, a failover).
  redis.defineCommand("tornQuotaAcquire", {
    numberOfKeys: 1,
    lua: readFileSync(SCRIPT, "utf8"),
  });
  try {
    await redis.ping();
  } catch (e) {
    fail(`Redis does not answer (${e.message})`);
  }

  const wait = opts.startUs / 1000 - (performance.timeOrigin + performance.now());
  if (wait > 0) await sleep(wait);
  const end = performance.now() + opts.runMs;

  const lines = [];
  async function caller(user) {
    const key = stateKey(opts.prefix, user);
    while (performance.now() < end) {
      const send = epochUs();
      // KEYS[1] and ARGV[1..3] make a complete call; ARGV[4] = "0" (no reserve) only holds
      // the place of ARGV[5] = "1", which appends the decision's Redis time to the reply.
      const [granted, , retryAfterMs, redisMs] = await redis.tornQuotaAcquire(
        key,
        opts.limit,
        opts.windowMs,
        1,
        "0",
        "1",
      );
      const recv = epochUs();
      if (granted === 1) {
        lines.push(`${user} ${redisMs} ${send} ${recv}`);
      } else {
        // Denial is a value: wait the script's retry_after_ms, no longer than the run.
        const left = end - performance.now();
        if (left <= 0) return;
        await sleep(Math.min(retryAfterMs, left));
      }
    }
  }

  const callers = [];
  for (const user of opts.users) {
    for (let i = 0; i < opts.tasksPerUser; i++) callers.push(caller(user));
  }
  await Promise.all(callers);
  await redis.quit();
  // One write at the end, so the lines are all out before the process exits.
  if (lines.length > 0) process.stdout.write(`${lines.join("\n")}\n`);
}

main().catch((e) => fail(e.stack ?? String(e)));
