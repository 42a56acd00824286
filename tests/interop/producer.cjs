'use strict';
// Node.js BullMQ producer and query tool for the interop tests.
//
//   node producer.cjs --redis-url URL --prefix P --spec '{"cmd": "add", ...}'
//   node producer.cjs --redis-url URL --prefix P --spec '[{...}, {...}]'
//   node producer.cjs --redis-url URL --prefix P --serve   (one command per stdin line)
//
// Every command prints one line: {"ok": true, "cmd": ..., "result": ...} or
// {"ok": false, "cmd": ..., "error": {"name", "message"}}. Commands:
//   add {queue, name, data?, opts?}                  -> job
//   addBulk {queue, jobs: [{name, data?, opts?}]}    -> [job]
//   flow {flow: {name, queueName, data?, opts?, children?}, opts?} -> {job, children}
//   flowBulk {flows: [...]}                          -> [{job, children}]
//   getFlow {queue, id, depth?, maxChildren?}        -> {job, children}
//   upsertJobScheduler {queue, id, repeat, template?} -> job
//   removeJobScheduler {queue, id}                   -> bool
//   getJobSchedulers {queue, start?, end?, asc?}     -> [scheduler]
//   getJobScheduler {queue, id}                      -> scheduler | null
//   getJobSchedulersCount {queue}                    -> n
//   pause / resume / isPaused {queue}
//   getJobCounts {queue, types?: [...]}              -> {state: n}
//   getJobs {queue, types?, start?, end?, asc?}      -> [job]
//   getJob {queue, id}                               -> job | null
//   getJobState {queue, id}                          -> state
//   getChildrenValues / getIgnoredChildrenFailures / getDependenciesCount {queue, id}
//   getJobLogs {queue, id}                           -> {logs, count}
//   getDeduplicationJobId {queue, dedupId}           -> id | null
//   removeDeduplicationKey {queue, dedupId}          -> 1 | 0
//   remove {queue, id, removeChildren?}              -> 1 | 0
//   retry {queue, id, state?}; promote {queue, id}; updateProgress {queue, id, progress}
//   changePriority {queue, id, priority, lifo?}; changeDelay {queue, id, delay}
//   updateData {queue, id, data}; log {queue, id, line}          -> logs count
//   drain {queue, delayed?}; obliterate {queue, force?}; getMeta {queue}
//   setGlobalConcurrency {queue, concurrency}; removeGlobalConcurrency {queue} -> n removed
//   setGlobalRateLimit {queue, max, duration}; removeGlobalRateLimit {queue} -> n removed
//   rateLimit {queue, ms}; getRateLimitTtl {queue, maxJobs?}; removeRateLimitKey {queue} -> n
//   getCountsPerPriority {queue, priorities}         -> {"<priority>": n}
//   publishEvent {queue, eventName, fields?, maxEvents?} (a QueueEventsProducer)
//   flowAfterClose {flow}                            -> what add answers once closed
//   manualFinish {queue, outcome: "completed"|"failed", value?, fetchNext?}: a Worker
//     without processor takes a job and finishes it by hand -> the local Job's fields
//     after the move, the active events seen, and the id of the job fetched next
//   getWorkers {queue}                               -> [connection name] (sorted)
//   ping                                             -> "pong"

const readline = require('node:readline');
const { Queue, FlowProducer, QueueEventsProducer, Worker } = require('bullmq');
const { parseArgs, emit, connection, errorInfo, jobToJson, flowToJson } = require('./lib/common.cjs');

const args = parseArgs(process.argv.slice(2), { script: 'producer.cjs', flags: ['--serve'] });
const conn = connection(args.redisUrl);
const queues = new Map();
let flowProducer = null;

function queue(name) {
  if (!name) throw new Error('command needs "queue"');
  if (!queues.has(name)) queues.set(name, new Queue(name, { connection: conn, prefix: args.prefix }));
  return queues.get(name);
}

function flows() {
  if (!flowProducer) flowProducer = new FlowProducer({ connection: conn, prefix: args.prefix });
  return flowProducer;
}

async function requireJob(cmd) {
  const job = await queue(cmd.queue).getJob(cmd.id);
  if (!job) throw new Error(`job ${cmd.id} not found in queue ${cmd.queue}`);
  return job;
}

const handlers = {
  ping: async () => 'pong',
  add: async (c) => jobToJson(await queue(c.queue).add(c.name, c.data ?? {}, c.opts ?? {})),
  addBulk: async (c) => (await queue(c.queue).addBulk(c.jobs)).map(jobToJson),
  flow: async (c) => flowToJson(await flows().add(c.flow, c.opts)),
  flowBulk: async (c) => (await flows().addBulk(c.flows)).map(flowToJson),
  getFlow: async (c) => {
    // Undefined keys would override getFlow's defaults (depth 10, maxChildren 20).
    const opts = { queueName: c.queue, id: c.id, prefix: c.prefix ?? args.prefix };
    if (c.depth !== undefined) opts.depth = c.depth;
    if (c.maxChildren !== undefined) opts.maxChildren = c.maxChildren;
    return flowToJson(await flows().getFlow(opts));
  },
  upsertJobScheduler: async (c) =>
    jobToJson(await queue(c.queue).upsertJobScheduler(c.id, c.repeat, c.template)),
  removeJobScheduler: async (c) => queue(c.queue).removeJobScheduler(c.id),
  getJobSchedulers: async (c) =>
    queue(c.queue).getJobSchedulers(c.start ?? 0, c.end ?? -1, c.asc ?? false),
  getJobScheduler: async (c) => (await queue(c.queue).getJobScheduler(c.id)) ?? null,
  getJobSchedulersCount: async (c) => queue(c.queue).getJobSchedulersCount(),
  pause: async (c) => {
    await queue(c.queue).pause();
    return true;
  },
  resume: async (c) => {
    await queue(c.queue).resume();
    return true;
  },
  isPaused: async (c) => queue(c.queue).isPaused(),
  getJobCounts: async (c) => queue(c.queue).getJobCounts(...(c.types ?? [])),
  getJobs: async (c) =>
    (await queue(c.queue).getJobs(c.types, c.start ?? 0, c.end ?? -1, c.asc ?? false)).map(
      jobToJson,
    ),
  getJob: async (c) => jobToJson(await queue(c.queue).getJob(c.id)),
  getJobState: async (c) => queue(c.queue).getJobState(c.id),
  getChildrenValues: async (c) => (await requireJob(c)).getChildrenValues(),
  getIgnoredChildrenFailures: async (c) => (await requireJob(c)).getIgnoredChildrenFailures(),
  getDependenciesCount: async (c) => (await requireJob(c)).getDependenciesCount(),
  getJobLogs: async (c) => queue(c.queue).getJobLogs(c.id),
  getDeduplicationJobId: async (c) => queue(c.queue).getDeduplicationJobId(c.dedupId),
  removeDeduplicationKey: async (c) => queue(c.queue).removeDeduplicationKey(c.dedupId),
  remove: async (c) => queue(c.queue).remove(c.id, { removeChildren: c.removeChildren ?? true }),
  retry: async (c) => {
    await (await requireJob(c)).retry(c.state ?? 'failed');
    return true;
  },
  promote: async (c) => {
    await (await requireJob(c)).promote();
    return true;
  },
  changePriority: async (c) => {
    await (await requireJob(c)).changePriority({ priority: c.priority, lifo: c.lifo ?? false });
    return true;
  },
  changeDelay: async (c) => {
    await (await requireJob(c)).changeDelay(c.delay);
    return true;
  },
  updateData: async (c) => {
    await (await requireJob(c)).updateData(c.data);
    return true;
  },
  log: async (c) => (await requireJob(c)).log(c.line),
  updateProgress: async (c) => {
    await (await requireJob(c)).updateProgress(c.progress);
    return true;
  },
  drain: async (c) => {
    await queue(c.queue).drain(c.delayed ?? false);
    return true;
  },
  obliterate: async (c) => {
    await queue(c.queue).obliterate({ force: c.force ?? false });
    return true;
  },
  getMeta: async (c) => queue(c.queue).getMeta(),
  setGlobalConcurrency: async (c) => {
    await queue(c.queue).setGlobalConcurrency(c.concurrency);
    return true;
  },
  removeGlobalConcurrency: async (c) => queue(c.queue).removeGlobalConcurrency(),
  setGlobalRateLimit: async (c) => {
    await queue(c.queue).setGlobalRateLimit(c.max, c.duration);
    return true;
  },
  removeGlobalRateLimit: async (c) => queue(c.queue).removeGlobalRateLimit(),
  rateLimit: async (c) => {
    await queue(c.queue).rateLimit(c.ms);
    return true;
  },
  getRateLimitTtl: async (c) => queue(c.queue).getRateLimitTtl(c.maxJobs),
  removeRateLimitKey: async (c) => queue(c.queue).removeRateLimitKey(),
  getCountsPerPriority: async (c) => queue(c.queue).getCountsPerPriority(c.priorities),
  publishEvent: async (c) => {
    const producer = new QueueEventsProducer(c.queue, { connection: conn, prefix: args.prefix });
    try {
      await producer.publishEvent({ eventName: c.eventName, ...(c.fields ?? {}) }, c.maxEvents);
    } finally {
      await producer.close();
    }
    return true;
  },
  manualFinish: async (c) => {
    const worker = new Worker(c.queue, null, { connection: conn, prefix: args.prefix, autorun: false });
    const active = [];
    worker.on('active', (job, prev) => active.push([job.id, prev]));
    try {
      const job = await worker.getNextJob('token-1');
      const next =
        c.outcome === 'completed'
          ? await job.moveToCompleted(c.value ?? null, 'token-1', c.fetchNext ?? false)
          : await job.moveToFailed(new Error(c.value), 'token-1', c.fetchNext ?? false);
      return {
        id: job.id,
        attemptsMade: job.attemptsMade,
        returnvalue: job.returnvalue ?? null,
        failedReason: job.failedReason ?? null,
        finishedOn: job.finishedOn ?? null,
        active,
        next: Array.isArray(next) && next[1] ? String(next[1]) : null,
      };
    } finally {
      await worker.close();
    }
  },
  flowAfterClose: async (c) => {
    const producer = new FlowProducer({ connection: conn, prefix: args.prefix });
    await producer.close();
    return flowToJson(await producer.add(c.flow));
  },
  getWorkers: async (c) =>
    (await queue(c.queue).getWorkers()).map((client) => client.rawname).sort(),
};

async function run(cmd) {
  const handler = handlers[cmd && cmd.cmd];
  if (!handler) {
    emit({ ok: false, cmd: cmd && cmd.cmd, error: { name: 'Error', message: 'unknown command' } });
    return false;
  }
  try {
    const result = await handler(cmd);
    emit({ ok: true, cmd: cmd.cmd, result: result === undefined ? null : result });
    return true;
  } catch (err) {
    emit({ ok: false, cmd: cmd.cmd, error: errorInfo(err) });
    return false;
  }
}

async function closeAll() {
  const closing = [...queues.values()].map((q) => q.close());
  if (flowProducer) closing.push(flowProducer.close());
  await Promise.allSettled(closing);
}

async function main() {
  let allOk = true;
  if (args.flags.serve) {
    const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
    emit({ ok: true, cmd: 'ready', result: null });
    for await (const line of lines) {
      if (!line.trim()) continue;
      let cmd;
      try {
        cmd = JSON.parse(line);
      } catch (err) {
        emit({ ok: false, cmd: null, error: errorInfo(err) });
        continue;
      }
      allOk = (await run(cmd)) && allOk;
    }
  } else {
    const commands = Array.isArray(args.spec) ? args.spec : [args.spec];
    for (const cmd of commands) allOk = (await run(cmd)) && allOk;
  }
  await closeAll();
  process.exit(allOk ? 0 : 1);
}

main().catch((err) => {
  process.stderr.write(`producer crashed: ${err && err.stack}\n`);
  process.exit(3);
});
