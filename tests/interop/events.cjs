'use strict';
// Node.js BullMQ QueueEvents listener for the interop tests.
//
//   node events.cjs --redis-url URL --prefix P --spec '{"queue": "q", ...}'
//
// Spec: queue, lastEventId (default "0": the whole stream, so nothing written
// before the listener started is missed), count (exit after that many events),
// timeoutMs (exit after that long), until ("<event name>": exit after the first
// such event), blockingTimeout (ms).
// Output: {"event": "ready"}, then one line per stream entry
// {"event": "queue-event", "name": <event>, "fields": {...}, "id": <stream id>},
// errors as {"event": "error", ...}, and finally {"event": "closed", "seen": n}.

const { QueueEvents } = require('bullmq');
const { parseArgs, emit, connection, errorInfo } = require('./lib/common.cjs');

const args = parseArgs(process.argv.slice(2), { script: 'events.cjs' });
const spec = args.spec || {};
if (!spec.queue) {
  process.stderr.write('events spec needs "queue"\n');
  process.exit(2);
}

let seen = 0;
let closing = false;

const listener = new QueueEvents(spec.queue, {
  connection: connection(args.redisUrl),
  prefix: args.prefix,
  autorun: false,
  lastEventId: spec.lastEventId ?? '0',
  blockingTimeout: spec.blockingTimeout ?? 1000,
});

async function finish(code) {
  if (closing) return;
  closing = true;
  await listener.close().catch(() => {});
  emit({ event: 'closed', seen });
  process.exit(code);
}

// QueueEvents re-emits every entry twice (`<event>` and `<event>:<jobId>`) and
// passes `drained` without fields; hooking `emit` sees each entry exactly once.
const originalEmit = listener.emit.bind(listener);
listener.emit = (name, ...rest) => {
  if (name === 'error') {
    emit({ event: 'error', error: errorInfo(rest[0]) });
  } else if (typeof name === 'string' && !name.includes(':')) {
    const [fields, id] = name === 'drained' ? [{}, rest[0]] : rest;
    seen += 1;
    emit({ event: 'queue-event', name, fields, id });
    if ((spec.count && seen >= spec.count) || (spec.until && spec.until === name)) finish(0);
  }
  return originalEmit(name, ...rest);
};

// Errors are reported through the hook above; this keeps EventEmitter from
// throwing on an unhandled 'error'.
listener.on('error', () => {});

async function main() {
  if (spec.timeoutMs) setTimeout(() => finish(0), spec.timeoutMs).unref();
  listener.run().catch((err) => {
    emit({ event: 'error', error: errorInfo(err) });
    finish(1);
  });
  await listener.waitUntilReady();
  emit({ event: 'ready', queue: spec.queue });
}

process.on('SIGTERM', () => finish(0));
process.on('SIGINT', () => finish(0));
main().catch((err) => {
  process.stderr.write(`events crashed: ${err && err.stack}\n`);
  process.exit(3);
});
