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
// API). No test runs this script yet: the gateway does not exist yet.

import { setTimeout as sleep } from "node:timers/promises";

const BASE = (process.env.TORN_API_BASE_URL ?? "https://api.torn.com").replace(/\/+$/, "");
const KEY = process.env.TORN_API_KEY ?? "";
const MAX_ATTEMPTS = 5;

// What may be printed of a key: `****` and its last 4 characters, as the crate's ApiKey shows it.
const masked = (text) => (KEY ? String(text).replaceAll(KEY, `****${KEY.slice(-4)}`) : String(text));

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

async function main() {
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
