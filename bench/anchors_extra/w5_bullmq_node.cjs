// W5.flows for the 'bullmq-node' anchor (Node.js BullMQ), written for flowjobs' bench/run.
// usage: node w5_bullmq_node.cjs run | w5-worker IDX
// Needs NODE_PATH pointing at the harness's node_modules (bullmq + ioredis).
//
// W5: BENCH_W5_FLOWS flows (a parent with BENCH_W5_CHILDREN children, one queue) added one
// by one with FlowProducer.add while BENCH_W5_WORKERS idle worker processes (concurrency
// BENCH_W5_CONCURRENCY each) run. create_s: the add loop; done_s: from just before the first
// add to the last parent's finishedOn (read from Redis). Same rules as bench/flowjobs_bench.py.
'use strict';
const { spawn } = require('node:child_process');
const { performance } = require('node:perf_hooks');
const { FlowProducer, Worker } = require('bullmq');
const { CONN, payload, sleep, fmt, redis } = require('./anchor_common.cjs');

const NAME = 'bullmq-node';
const QUEUE = 'bench';
const env = process.env;
const FLOWS = parseInt(env.BENCH_W5_FLOWS || '200', 10);
const CHILDREN = parseInt(env.BENCH_W5_CHILDREN || '10', 10);
const WORKERS = parseInt(env.BENCH_W5_WORKERS || '2', 10);
const CONCURRENCY = parseInt(env.BENCH_W5_CONCURRENCY || '10', 10);
const DEADLINE_MS = parseFloat(env.BENCH_CASE_DEADLINE_S || '280') * 1000;

const nowMs = () => performance.timeOrigin + performance.now();
const emit = (metric, value) => process.stdout.write(`${NAME} W5.flows ${metric} ${fmt(value)}\n`);

function flowSpec(seq) {
  const children = [];
  for (let i = 1; i <= CHILDREN; i++) children.push({ name: 'child', queueName: QUEUE, data: payload(seq + i) });
  return { name: 'parent', queueName: QUEUE, data: payload(seq), children };
}

async function w5Worker(idx) {
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
  const children = [];
  for (let i = 0; i < WORKERS; i++) {
    children.push(spawn(process.execPath, [__filename, 'w5-worker', String(i)], { stdio: ['ignore', 'inherit', 'inherit'] }));
  }
  let parentIds; let createS; let t0Ms;
  try {
    for (let i = 0; i < WORKERS; i++) {
      while (!(await r.get(`bench:ready:${i}`))) {
        if (performance.now() > deadline) throw new Error('workers not ready');
        await sleep(20);
      }
    }
    const fp = new FlowProducer(CONN);
    await fp.waitUntilReady();
    const specs = [];
    for (let f = 0; f < FLOWS; f++) specs.push(flowSpec(f * 100));
    t0Ms = nowMs();
    const t0 = performance.now();
    parentIds = [];
    for (const spec of specs) parentIds.push((await fp.add(spec)).job.id);
    createS = (performance.now() - t0) / 1000;
    await fp.close();
    const total = FLOWS * (CHILDREN + 1);
    while ((await r.zcard(`bull:${QUEUE}:completed`)) < total) {
      if (await r.zcard(`bull:${QUEUE}:failed`)) throw new Error('jobs failed');
      if (performance.now() > deadline) throw new Error('deadline');
      await sleep(10);
    }
  } finally {
    await Promise.all(children.map(stopChild));
  }
  const pipe = r.pipeline();
  for (const id of parentIds) pipe.hget(`bull:${QUEUE}:${id}`, 'finishedOn');
  const finished = (await pipe.exec()).map(([, v]) => v).filter((v) => v !== null).map(Number);
  r.disconnect();
  if (finished.length !== FLOWS) throw new Error(`${finished.length} of ${FLOWS} parents finished`);
  emit('create_s', createS);
  emit('done_s', (Math.max(...finished) - t0Ms) / 1000);
}

async function main() {
  const [cmd, arg] = process.argv.slice(2);
  if (cmd === 'w5-worker') return w5Worker(arg);
  if (cmd === 'run') return run();
  throw new Error('usage: run | w5-worker IDX');
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
