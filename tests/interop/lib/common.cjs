'use strict';
// Shared plumbing for the interop scripts: argument parsing, JSON-line output
// and a stable JSON view of a BullMQ job. Every script prints one JSON object
// per line on stdout; diagnostics go to stderr.

const fs = require('node:fs');

function usage(script, extra) {
  return (
    `usage: node ${script} --redis-url URL --prefix PREFIX ` +
    `[--spec JSON | --spec-file PATH | (spec on stdin)]${extra ? ' ' + extra : ''}`
  );
}

// Parses `--redis-url`, `--prefix`, `--spec` / `--spec-file` and boolean flags.
// The spec (a JSON document) is read from stdin when neither option is given
// and `specFromStdin` is true.
function parseArgs(argv, { script, specFromStdin = true, flags = [] } = {}) {
  const args = { redisUrl: null, prefix: null, spec: null, flags: {} };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) fail(`missing value after ${arg}\n${usage(script)}`);
      return argv[++i];
    };
    if (arg === '--redis-url') args.redisUrl = value();
    else if (arg === '--prefix') args.prefix = value();
    else if (arg === '--spec') args.spec = JSON.parse(value());
    else if (arg === '--spec-file') args.spec = JSON.parse(fs.readFileSync(value(), 'utf8'));
    else if (flags.includes(arg)) args.flags[arg.replace(/^--/, '')] = true;
    else fail(`unknown argument ${arg}\n${usage(script)}`);
  }
  if (!args.redisUrl || !args.prefix) fail(usage(script));
  if (args.spec === null && specFromStdin && !args.flags.serve) {
    const text = fs.readFileSync(0, 'utf8').trim();
    args.spec = text ? JSON.parse(text) : {};
  }
  return args;
}

function fail(message) {
  process.stderr.write(message + '\n');
  process.exit(2);
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function connection(redisUrl) {
  // Workers and QueueEvents need maxRetriesPerRequest null; it is harmless for
  // the others. Keep the connection from retrying forever once Redis is gone so
  // that a stopped test server does not leave a process hanging.
  return {
    url: redisUrl,
    maxRetriesPerRequest: null,
    retryStrategy: (times) => (times > 50 ? null : Math.min(times * 50, 500)),
  };
}

function errorInfo(err) {
  if (!err) return null;
  return { name: err.name, message: err.message };
}

function jobToJson(job) {
  if (!job) return null;
  return {
    id: job.id,
    name: job.name,
    queueName: job.queueName,
    queueQualifiedName: job.queueQualifiedName,
    data: job.data,
    opts: job.opts,
    timestamp: job.timestamp,
    delay: job.delay,
    priority: job.priority,
    attemptsMade: job.attemptsMade,
    attemptsStarted: job.attemptsStarted,
    stalledCounter: job.stalledCounter,
    processedOn: job.processedOn ?? null,
    finishedOn: job.finishedOn ?? null,
    returnvalue: job.returnvalue === undefined ? null : job.returnvalue,
    failedReason: job.failedReason ?? null,
    deferredFailure: job.deferredFailure ?? null,
    stacktrace: job.stacktrace ?? [],
    progress: job.progress,
    parentKey: job.parentKey ?? null,
    parent: job.parent ?? null,
    repeatJobKey: job.repeatJobKey ?? null,
    deduplicationId: job.deduplicationId ?? null,
    processedBy: job.processedBy ?? null,
  };
}

function flowToJson(node) {
  if (!node) return null;
  return {
    job: jobToJson(node.job),
    children: (node.children || []).map(flowToJson),
  };
}

module.exports = { parseArgs, emit, fail, connection, errorInfo, jobToJson, flowToJson };
