// gateway-fetch.mjs: how a legacy app calls Torn through the torn-quota gateway.
//
// The app's code stays what it was: plain fetch() with the key in `?key=`, against
// TORN_API_BASE_URL. Pointing that one variable at `torn-quota serve` (default
// http://127.0.0.1:8100) instead of https://api.torn.com puts every call on the key owner's
// shared quota; the gateway moves the key into the Authorization header before Torn sees it.
// When the gateway cannot get quota in time it answers as Torn does, code 5 at HTTP 200, with
// Retry-After, so the app's existing code-5 handling below is all it needs.
//
//   TORN_API_BASE_URL=http://127.0.0.1:8100 TORN_API_KEY=... node examples/node/gateway-fetch.mjs
//
// Needs a running `torn-quota serve` (or Torn itself, or `torn-quota sim`, which speak the same
// API).
//
// With --run-ms it becomes a load worker instead (tests/node_interop.rs runs it so, through a
// gateway beside Rust and ioredis workers on the same owners): several legacy callers per key
// in TORN_API_KEYS (comma-separated; keys never go on the command line) call
// `/user/?selections=basic` until the deadline, each with a fresh `timestamp=` as legacy apps
// add to get past Torn's cache, and it prints one line per answered call with data:
//
//   <player_id from the answer> <send_us> <recv_us>
//
// send_us and recv_us are this process's wall clock (µs since the Unix epoch) around the fetch.
// A code 5 prints nothing and waits what the gateway names; any other Torn error fails the run.
// Options: --run-ms, --tasks-per-key (default 3), --start-us (wall-clock µs to start at).

import { setTimeout as sleep } from "node:timers/promises";

const BASE = (process.env.TORN_API_BASE_URL ?? "https://api.torn.com").replace(/\/+$/, "");
const KEY = process.env.TORN_API_KEY ?? "";
const MAX_ATTEMPTS = 5;

// What may be printed of a key: `****` and its last 4 characters, as the crate's ApiKey shows it.
const SECRETS = [KEY, ...(process.env.TORN_API_KEYS ?? "").split(",")].filter((k) => k !== "");
const masked = (text) =>
  SECRETS.reduce((t, k) => t.replaceAll(k, `****${k.slice(-4)}`), String(text));

// The wait a code 5 asks for: Retry-After (seconds, or an HTTP date), else the gateway's
// X-Torn-Quota-Retry-After-Ms, else a second. Torn itself sends neither header.
function retryAfterMs(headers) {
  const ra = headers.get("retry-after");
  if (ra !== null) {
    if (/^\d+$/.test(ra.trim())) return Number(ra.trim()) * 1000;
    const at = Date.parse(ra);
    if (!Number.isNaN(at)) return Math.max(0, at - Date.now());
  }
  const ms = headers.get("x-torn-quota-retry-after-ms");
  if (ms !== null && /^\d+$/.test(ms.trim())) return Number(ms.trim());
  return 1000;
}

// One Torn call, legacy style, retried on code 5 after the wait it names.
async function torn(path) {
  const sep = path.includes("?") ? "&" : "?";
  const url = `${BASE}${path}${sep}key=${encodeURIComponent(KEY)}`;
  for (let attempt = 1; ; attempt++) {
    let res;
    try {
      res = await fetch(url);
    } catch (e) {
      // fetch's error may carry the URL, and so the key: mask it before anyone sees it.
      throw new Error(masked(`${path}: ${e.cause?.message ?? e.message}`));
    }
    const body = await res.json();
    const code = body?.error?.code;
    if (code === 5 && attempt < MAX_ATTEMPTS) {
      const wait = retryAfterMs(res.headers);
      process.stderr.write(`${path}: code 5 (too many requests), retrying in ${wait} ms\n`);
      await sleep(wait);
      continue;
    }
    if (code !== undefined) {
      throw new Error(masked(`${path}: Torn error ${code}: ${body.error.error}`));
    }
    const remaining = res.headers.get("x-torn-quota-remaining");
    if (remaining !== null) process.stderr.write(`${path}: ${remaining} calls left this window\n`);
    return body;
  }
}

// Wall clock in µs since the epoch, with sub-ms precision (Date.now() has only ms).
function epochUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

// --run-ms and friends; null when the script runs as the plain example.
function loadOptions(argv) {
  if (argv.length === 0) return null;
  const opts = { "run-ms": null, "tasks-per-key": "3", "start-us": "0" };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    if (!(name in opts) || argv[i + 1] === undefined) {
      throw new Error(`unknown or valueless option ${argv[i]}`);
    }
    opts[name] = argv[i + 1];
  }
  const int = (name, min) => {
    const raw = String(opts[name]);
    if (!/^\d+$/.test(raw) || Number(raw) < min || !Number.isSafeInteger(Number(raw))) {
      throw new Error(`--${name} must be an integer >= ${min}, got '${raw}'`);
    }
    return Number(raw);
  };
  const keys = (process.env.TORN_API_KEYS ?? "").split(",").filter((k) => k !== "");
  if (keys.length === 0 || !keys.every((k) => /^[A-Za-z0-9]{16}$/.test(k))) {
    throw new Error("--run-ms needs TORN_API_KEYS: comma-separated Torn API keys");
  }
  return {
    keys,
    runMs: int("run-ms", 0),
    tasksPerKey: int("tasks-per-key", 1),
    startUs: int("start-us", 0),
  };
}

// The load worker: legacy calls through the gateway until the deadline, one line per grant.
async function load(opts) {
  const wait = opts.startUs / 1000 - (performance.timeOrigin + performance.now());
  if (wait > 0) await sleep(wait);
  const end = performance.now() + opts.runMs;
  const lines = [];
  let seq = 0;
  async function caller(key) {
    while (performance.now() < end) {
      // A fresh timestamp per call: the gateway (as Torn) answers a repeated call from cache.
      const url = `${BASE}/user/?selections=basic&timestamp=${Date.now()}${seq++}&key=${key}`;
      const send = epochUs();
      let res;
      try {
        res = await fetch(url);
      } catch (e) {
        throw new Error(masked(`fetch failed: ${e.cause?.message ?? e.message}`));
      }
      const body = await res.json();
      const recv = epochUs();
      const code = body?.error?.code;
      if (code === 5) {
        const left = end - performance.now();
        if (left <= 0) return;
        await sleep(Math.min(retryAfterMs(res.headers), left));
        continue;
      }
      if (code !== undefined) throw new Error(`Torn error ${code}: ${body.error.error}`);
      if (!Number.isSafeInteger(body.player_id)) {
        throw new Error(`answer without player_id (HTTP ${res.status})`);
      }
      lines.push(`${body.player_id} ${send} ${recv}`);
    }
  }
  const callers = [];
  for (const key of opts.keys) {
    for (let i = 0; i < opts.tasksPerKey; i++) callers.push(caller(key));
  }
  try {
    await Promise.all(callers);
  } finally {
    // One write at the end, so the lines are all out before the process exits.
    if (lines.length > 0) process.stdout.write(`${lines.join("\n")}\n`);
  }
}

async function main() {
  const opts = loadOptions(process.argv.slice(2));
  if (opts !== null) return load(opts);
  if (!/^[A-Za-z0-9]{16}$/.test(KEY)) {
    throw new Error("set TORN_API_KEY to a Torn API key (16 letters and digits)");
  }
  // v1, as most legacy code calls: /{section}/{id}?selections=…
  const v1 = await torn("/user/?selections=basic");
  console.log(JSON.stringify({ api: "v1", player_id: v1.player_id, name: v1.name }));
  // v2: the same data under /v2/.
  const v2 = await torn("/v2/user/basic");
  const p = v2.profile ?? v2;
  console.log(JSON.stringify({ api: "v2", id: p.id, name: p.name }));
}

main().catch((e) => {
  process.stderr.write(`gateway-fetch: ${masked(e.message)}\n`);
  process.exit(1);
});
