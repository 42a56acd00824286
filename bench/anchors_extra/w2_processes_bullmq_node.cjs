// W2.c50.p2 for the 'bullmq-node' anchor (Node.js BullMQ), written for flowjobs' bench/run:
// the anchor for `runworker --processes 2` and flowjobs' other two-process cases.
// usage: node w2_processes_bullmq_node.cjs run | worker IDX
// Needs NODE_PATH pointing at the harness's node_modules (bullmq + ioredis).
//
// BENCH_N no-op jobs added in bulk to a paused queue; two worker processes (concurrency 50
// each) start and say they are ready; the queue is resumed. jobs_per_s: from the first
// processedOn to the last finishedOn, read from Redis. Same rules as bench/flowjobs_bench.py.
'use strict';
const { spawn } = require('node:child_process');
const { performance } = require('node:perf_hooks');
const { Queue, Worker } = require('bullmq');
const { CONN, payload, sleep, fmt, redis } = require('./anchor_common.cjs');

const NAME = 'bullmq-node';
const CASE = 'W2.c50.p2';
const QUEUE = 'bench';
const env = process.env;
const N = parseInt(env.BENCH_N || '20000', 10);
const CHUNK = parseInt(env.BENCH_BULK_CHUNK || '1000', 10);
const PROCESSES = 2;
const CONCURRENCY = 50;
const DEADLINE_MS = parseFloat(env.BENCH_CASE_DEADLINE_S || '280') * 1000;

async function worker(idx) {
  const r = redis();
  const w = new Worker(QUEUE, async () => null, { ...CONN, concurrency: CONCURRENCY, autorun: false });
  const running = w.run();
  await w.waitUntilReady();
  await sleep(200);
  await r.set(`bench:ready:${idx}`, '1');
  await new Promise((resolve) => process.once('SIGTERM', resolve));
  await w.close();
  await running.catch(() => {});
  r.disconnect();
}

function stopChild(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    const t = setTimeout(() => { child.kill('SIGKILL'); resolve(); }, 10000);
    child.once('exit', () => { clearTimeout(t); resolve(); });
    child.kill('SIGTERM');
  });
}

async function run() {
  const r = redis();
  const deadline = performance.now() + DEADLINE_MS;
  const q = new Queue(QUEUE, CONN);
  await q.pause();
  for (let start = 0; start < N; start += CHUNK) {
    const jobs = [];
    for (let i = start; i < Math.min(N, start + CHUNK); i++) jobs.push({ name: 'job', data: payload(i) });
    await q.addBulk(jobs);
  }
  const children = [];
  for (let i = 0; i < PROCESSES; i++) {
    children.push(spawn(process.execPath, [__filename, 'worker', String(i)], { stdio: ['ignore', 'inherit', 'inherit'] }));
  }
  try {
    for (let i = 0; i < PROCESSES; i++) {
      while (!(await r.get(`bench:ready:${i}`))) {
        if (performance.now() > deadline) throw new Error('workers not ready');
        await sleep(20);
      }
    }
    await q.resume();
    while ((await r.zcard(`bull:${QUEUE}:completed`)) < N) {
      if (await r.zcard(`bull:${QUEUE}:failed`)) throw new Error('jobs failed');
      if (performance.now() > deadline) throw new Error('deadline');
      await sleep(10);
    }
  } finally {
    await Promise.all(children.map(stopChild));
    await q.close();
  }
  const ids = await r.zrange(`bull:${QUEUE}:completed`, 0, -1);
  const pipe = r.pipeline();
  for (const id of ids) pipe.hget(`bull:${QUEUE}:${id}`, 'processedOn');
  const starts = (await pipe.exec()).map(([, v]) => Number(v));
  const last = await r.zrange(`bull:${QUEUE}:completed`, -1, -1, 'WITHSCORES');
  r.disconnect();
  const seconds = (Number(last[1]) - Math.min(...starts)) / 1000;
  process.stdout.write(`${NAME} ${CASE} jobs_per_s ${fmt(N / seconds)}\n`);
}

async function main() {
  const [cmd, arg] = process.argv.slice(2);
  if (cmd === 'worker') return worker(arg);
  if (cmd === 'run') return run();
  throw new Error('usage: run | worker IDX');
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
