// bench/drain.py's view of one Node.js BullMQ drain: where its CPU goes, beside flowjobs'.
// usage: NODE_PATH=tests/interop/node_modules REDIS_PORT=P node drain_bullmq_node.cjs [CONCURRENCY]
//
// FLUSHALL, then BENCH_N no-op jobs (the harness's payload) added in bulk; one Worker
// (CONCURRENCY, default 50, async no-op processor) drains them. From the Worker's start to
// its last completion it reads this process's CPU and Redis's (INFO cpu), and Redis's
// command statistics (reset at the start). Prints them per job, as bench/drain.py does for
// flowjobs' cases, so the two can be read side by side on the same Redis.
'use strict';
const { Queue, Worker } = require('bullmq');
const { CONN, payload, redis } = require('./anchor_common.cjs');

const N = parseInt(process.env.BENCH_N || '20000', 10);
const CONCURRENCY = parseInt(process.argv[2] || '50', 10);

async function redisCpuS(r) {
  const info = await r.info('cpu');
  const field = (name) => parseFloat(info.match(new RegExp(`${name}:([\\d.]+)`))[1]);
  return field('used_cpu_user') + field('used_cpu_sys');
}

async function main() {
  const r = redis();
  await r.flushall();
  const queue = new Queue('bench', CONN);
  for (let start = 0; start < N; start += 1000) {
    const jobs = [];
    for (let i = start; i < Math.min(N, start + 1000); i++) jobs.push({ name: 'job', data: payload(i) });
    await queue.addBulk(jobs);
  }
  await r.config('RESETSTAT');
  const redisBefore = await redisCpuS(r);
  const cpuBefore = process.cpuUsage();
  const started = Date.now();
  let completed = 0;
  await new Promise((resolve) => {
    const worker = new Worker('bench', async () => null, { ...CONN, concurrency: CONCURRENCY });
    worker.on('completed', () => {
      completed += 1;
      if (completed === N) worker.close().then(resolve);
    });
  });
  const seconds = (Date.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const redisCpu = (await redisCpuS(r)) - redisBefore;
  const perJob = (x) => (x / N).toFixed(2).padStart(8);
  console.log(`bullmq-node c${CONCURRENCY}: ${N} jobs drained at ${Math.round(N / seconds)} jobs/s`);
  console.log(`  node process: ${((cpu.user + cpu.system) / N).toFixed(1)} µs of CPU a job`);
  console.log(`  redis-server: ${(redisCpu * 1e6 / N).toFixed(1)} µs of CPU a job`);
  const stats = [];
  for (const line of (await r.info('commandstats')).split('\n')) {
    const m = line.match(/cmdstat_(\S+):calls=(\d+),usec=(\d+)/);
    if (m && m[1] !== 'config|resetstat') stats.push([m[1], +m[3], +m[2]]);
  }
  stats.sort((a, b) => b[1] - a[1]);
  console.log('  Redis commands, the costliest:');
  for (const [name, usec, calls] of stats.slice(0, 12)) {
    console.log(`    ${name.padEnd(20)} ${perJob(usec)} µs  ${(calls / N).toFixed(3)} calls a job`);
  }
  await queue.close();
  r.disconnect();
}

main().then(() => process.exit(0), (error) => { console.error(error); process.exit(1); });
