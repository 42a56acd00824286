// What flowjobs' Node.js BullMQ anchor scripts (beside this file, copied with it by bench/run)
// share: the Redis they use (REDIS_HOST, REDIS_PORT), the harness's job payload, and helpers.
'use strict';
const IORedis = require('ioredis');

const HOST = process.env.REDIS_HOST || '127.0.0.1';
const PORT = parseInt(process.env.REDIS_PORT || '6390', 10);
const CONN = { connection: { host: HOST, port: PORT } };

const PAD = 'x'.repeat(72);
const pad6 = (i) => String(i).padStart(6, '0');
// the harness's payload (shared/bench-anchors), about 200 bytes of JSON
const payload = (i) => ({
  seq: i, tenant: 'acme-corp', user: `user-${pad6(i)}`,
  email: `user-${pad6(i)}@example.com`, action: 'send_welcome_email', pad: PAD,
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fmt = (v) => Number(v.toPrecision(6)).toString();
const redis = () => new IORedis({ host: HOST, port: PORT, maxRetriesPerRequest: null });

module.exports = { HOST, PORT, CONN, payload, sleep, fmt, redis };
