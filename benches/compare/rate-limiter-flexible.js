// rate-limiter-flexible's fixed window (RateLimiterRedis, ioredis) at 64 in flight over 10 000
// users: the baseline issue 2 set for `torn-quota bench`. Not run by CI (it needs Node.js):
//   cd benches/compare && npm install rate-limiter-flexible ioredis && node rate-limiter-flexible.js 300000
const Redis = require('ioredis');
const { RateLimiterRedis } = require('rate-limiter-flexible');
const N = +process.argv[2] || 300000, C = 64, USERS = 10000;
const redis = new Redis({ enableOfflineQueue: false });
const rl = new RateLimiterRedis({ storeClient: redis, points: 100, duration: 60, keyPrefix: 'rlf' + Date.now() });
async function main() {
  await new Promise(r => redis.once('ready', r));
  let issued = 0;
  const worker = async () => { while (issued < N) { issued++; const u = Math.floor(Math.random() * USERS);
    try { await rl.consume(u, 1); } catch (e) { if (e instanceof Error) throw e; } } };
  const t = process.hrtime.bigint();
  await Promise.all(Array.from({ length: C }, worker));
  const s = Number(process.hrtime.bigint() - t) / 1e9;
  console.log(JSON.stringify({ rlf_fixed_window_per_sec: Math.round(N / s) }));
  redis.disconnect();
}
main();
