'use strict';
// Node.js BullMQ worker for the interop tests.
//
//   node worker.cjs --redis-url URL --prefix P --spec '{...}'
//
// Spec:
//   queues: ["a", "b"] (or queue: "a")     one Worker per queue
//   concurrency, lockDuration, stalledInterval, maxStalledCount, drainDelay (s),
//   skipStalledCheck, skipLockRenewal, name, removeOnComplete, removeOnFail,
//   limiter ({max, duration}),
//   customBackoffMs                          used by backoff type "custom"
//   behaviours: {"<job name>" | "*": behaviour | [behaviour for the 1st run, 2nd run, ...]}
//   doneAfter: N                             print "done" after N final outcomes
//   gracefulClose: true                      on SIGTERM wait for active jobs (default: force)
//   exitWhenDone: true                       close and exit after "done"
//
// A behaviour is an object; the optional steps run in this order:
//   sleepMs (wait), gateKey (wait until that Redis key exists: a test opens the
//   gate when it is ready), progress (updateProgress), log (job.log), then `action`:
//   "echo" (default: return job.data) | "return" {value} | "throw" {message}
//   | "unrecoverable" {message} | "delay" {delayMs}: moveToDelayed + DelayedError
//   | "exit" {code}: process.exit in the middle of the job | "hang": never finish
//   | "children": return {values, ignored} of getChildrenValues /
//     getIgnoredChildrenFailures | "waitChildren": moveToWaitingChildren +
//     WaitingChildrenError while children are pending, then like "children"
//   | "spawnChild" {queue, name, data}: add a child job to `queue` with this job as
//     its parent, then like "waitChildren".
// The list form picks the entry by how many times this process has run the job.
//
// Output lines ({"event": ...}): ready, process, completed, failed (with
// "final"), stalled, error, done, closed.

const {
  Queue,
  Worker,
  DelayedError,
  UnrecoverableError,
  WaitingChildrenError,
} = require('bullmq');
const IORedis = require('ioredis');
const { parseArgs, emit, connection, errorInfo } = require('./lib/common.cjs');

const args = parseArgs(process.argv.slice(2), { script: 'worker.cjs' });
const spec = args.spec || {};
const queueNames = spec.queues || (spec.queue ? [spec.queue] : []);
if (queueNames.length === 0) {
  process.stderr.write('worker spec needs "queues" or "queue"\n');
  process.exit(2);
}
const behaviours = spec.behaviours || {};
const executions = new Map();
const workers = [];
let outcomes = 0;
let shuttingDown = false;

function behaviourFor(job) {
  const key = `${job.queueName}:${job.id}`;
  const run = executions.get(key) || 0;
  executions.set(key, run + 1);
  const configured = behaviours[job.name] ?? behaviours['*'] ?? { action: 'echo' };
  const chosen = Array.isArray(configured)
    ? configured[Math.min(run, configured.length - 1)]
    : configured;
  return { behaviour: chosen || { action: 'echo' }, execution: run + 1 };
}

const childQueues = new Map();
function childQueue(name) {
  if (!childQueues.has(name)) {
    childQueues.set(name, new Queue(name, { connection: connection(args.redisUrl), prefix: args.prefix }));
  }
  return childQueues.get(name);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

let gateClient = null;
async function waitForGate(key) {
  if (!gateClient) gateClient = new IORedis(args.redisUrl, connection(args.redisUrl));
  while (!shuttingDown && !(await gateClient.exists(key))) await sleep(20);
}

async function childrenResult(job) {
  return {
    values: await job.getChildrenValues(),
    ignored: await job.getIgnoredChildrenFailures(),
  };
}

async function processJob(job, token) {
  const { behaviour, execution } = behaviourFor(job);
  emit({
    event: 'process',
    queue: job.queueName,
    id: job.id,
    name: job.name,
    data: job.data,
    opts: job.opts,
    attemptsMade: job.attemptsMade,
    attemptsStarted: job.attemptsStarted,
    stalledCounter: job.stalledCounter,
    parentKey: job.parentKey ?? null,
    execution,
    action: behaviour.action || 'echo',
    at: Date.now(),
  });
  if (behaviour.sleepMs) await sleep(behaviour.sleepMs);
  if (behaviour.gateKey) await waitForGate(behaviour.gateKey);
  if (behaviour.progress !== undefined) await job.updateProgress(behaviour.progress);
  if (behaviour.log !== undefined) await job.log(behaviour.log);
  switch (behaviour.action || 'echo') {
    case 'echo':
      return job.data;
    case 'return':
      return behaviour.value;
    case 'throw':
      throw new Error(behaviour.message || 'node boom');
    case 'unrecoverable':
      throw new UnrecoverableError(behaviour.message || 'node unrecoverable');
    case 'delay':
      await job.moveToDelayed(Date.now() + (behaviour.delayMs ?? 1000), token);
      throw new DelayedError();
    case 'exit':
      process.exit(behaviour.code ?? 17);
      break;
    case 'hang':
      return new Promise(() => {});
    case 'children':
      return childrenResult(job);
    case 'waitChildren':
      if (await job.moveToWaitingChildren(token)) throw new WaitingChildrenError();
      return childrenResult(job);
    case 'spawnChild': {
      const parent = { id: job.id, queue: job.queueQualifiedName };
      await childQueue(behaviour.queue).add(behaviour.name || 'child', behaviour.data ?? {}, {
        parent,
      });
      if (await job.moveToWaitingChildren(token)) throw new WaitingChildrenError();
      return childrenResult(job);
    }
    default:
      throw new Error(`unknown action ${behaviour.action}`);
  }
}

async function shutdown(code) {
  if (shuttingDown) return;
  shuttingDown = true;
  // Forced by default: a test tearing down must not wait for a job that hangs on purpose.
  await Promise.allSettled(workers.map((w) => w.close(spec.gracefulClose !== true)));
  if (gateClient) gateClient.disconnect();
  emit({ event: 'closed' });
  process.exit(code);
}

function countOutcome() {
  outcomes += 1;
  if (spec.doneAfter && outcomes === spec.doneAfter) {
    emit({ event: 'done', count: outcomes });
    if (spec.exitWhenDone !== false) shutdown(0);
  }
}

function workerOptions() {
  const opts = {
    connection: connection(args.redisUrl),
    prefix: args.prefix,
    autorun: false,
    concurrency: spec.concurrency ?? 1,
    drainDelay: spec.drainDelay ?? 1,
  };
  for (const key of [
    'lockDuration',
    'stalledInterval',
    'maxStalledCount',
    'skipStalledCheck',
    'skipLockRenewal',
    'name',
    'removeOnComplete',
    'removeOnFail',
    'limiter',
  ]) {
    if (spec[key] !== undefined) opts[key] = spec[key];
  }
  if (spec.customBackoffMs !== undefined) {
    opts.settings = { backoffStrategy: () => spec.customBackoffMs };
  }
  return opts;
}

async function main() {
  for (const name of queueNames) {
    const worker = new Worker(name, processJob, workerOptions());
    worker.on('completed', (job, result) => {
      emit({
        event: 'completed',
        queue: name,
        id: job.id,
        name: job.name,
        returnvalue: result === undefined ? null : result,
        attemptsMade: job.attemptsMade,
      });
      countOutcome();
    });
    worker.on('failed', (job, err) => {
      const final = Boolean(job && job.finishedOn);
      emit({
        event: 'failed',
        queue: name,
        id: job ? job.id : null,
        name: job ? job.name : null,
        failedReason: err ? err.message : null,
        errorName: err ? err.name : null,
        attemptsMade: job ? job.attemptsMade : null,
        final,
      });
      if (final) countOutcome();
    });
    worker.on('stalled', (jobId) => emit({ event: 'stalled', queue: name, id: jobId }));
    worker.on('error', (err) => emit({ event: 'error', queue: name, error: errorInfo(err) }));
    workers.push(worker);
  }
  // "ready" before the workers run: a job already waiting can be done, and with
  // `doneAfter` the process gone, before waitUntilReady resolves once they run
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  emit({ event: 'ready', queues: queueNames, pid: process.pid });
  for (const worker of workers) {
    worker.run().catch((err) => emit({ event: 'error', error: errorInfo(err) }));
  }
}

process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
main().catch((err) => {
  process.stderr.write(`worker crashed: ${err && err.stack}\n`);
  process.exit(3);
});
