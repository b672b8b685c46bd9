// How the worker serves one delivery: what it replies, when it acks, what it skips. The
// session is a recorder of what the worker asked of it (the broker side is covered by the
// end-to-end tests in tests/tests/e2e/node_worker.rs).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Worker, WorkerConfigError, WsmqJobError } from '../index.js';
import { Slots } from '../src/lifecycle.js';

function quietWorker(options = {}) {
  const lines = [];
  const record = (level) => (message, fields) => lines.push({ level, message, fields });
  const logger = { debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
  const worker = new Worker({ amqp: 'amqp://127.0.0.1', logger, ...options });
  worker.slots = new Slots(worker.settings.concurrency);
  worker.lines = lines;
  return worker;
}

/** What a session was asked to do, in order; `publish` confirms unless told to refuse. */
function recordingSession({ refuse = false } = {}) {
  const events = [];
  return {
    events,
    lostReason: null,
    stoppedTaking: false,
    ack: (message) => events.push(['ack', message.fields.deliveryTag]),
    nackRequeue: (message) => events.push(['nack', message.fields.deliveryTag]),
    publish: (address, body, properties) => {
      events.push(['publish', address.replyTo, properties.headers['wsmq-status'], JSON.parse(body)]);
      return refuse ? Promise.reject(new Error('message nacked')) : Promise.resolve();
    },
  };
}

let tag = 0;
function delivery(body, headers = {}, properties = {}) {
  tag += 1;
  return {
    fields: { deliveryTag: tag, redelivered: false },
    properties: { replyTo: 'wsmq.reply.t', correlationId: `job-${tag}`, headers, ...properties },
    content: Buffer.from(body),
  };
}

test('a result is published, then the job acked', async () => {
  const worker = quietWorker().method('echo', (params) => params);
  const session = recordingSession();
  const message = delivery('{"a":1}');
  await worker.serveJob(session, 'echo', message);
  assert.deepEqual(session.events, [
    ['publish', 'wsmq.reply.t', 'ok', { a: 1 }],
    ['ack', message.fields.deliveryTag],
  ]);
});

test('a reply the broker refuses requeues the job instead of acking it', async () => {
  const worker = quietWorker().method('echo', (params) => params);
  const session = recordingSession({ refuse: true });
  const message = delivery('1');
  await worker.serveJob(session, 'echo', message);
  assert.deepEqual(session.events.at(-1), ['nack', message.fields.deliveryTag]);
  assert.equal(session.events.filter(([kind]) => kind === 'ack').length, 0);
});

test('progress goes out in order, before the result', async () => {
  const worker = quietWorker().method('steps', async (_params, job) => {
    job.progress({ step: 1 });
    assert.equal(await job.progress({ step: 2 }), true);
    return 'done';
  });
  const session = recordingSession();
  await worker.serveJob(session, 'steps', delivery('null'));
  assert.deepEqual(
    session.events.map((event) => event.slice(2)),
    [['progress', { step: 1 }], ['progress', { step: 2 }], ['ok', 'done'], []],
  );
});

test('a WsmqJobError is the reply as it is', async () => {
  const worker = quietWorker().method('fail', () => {
    throw new WsmqJobError(4001, 'bad image', { why: 'x' });
  });
  const session = recordingSession();
  await worker.serveJob(session, 'fail', delivery('{}'));
  assert.deepEqual(session.events[0].slice(2), ['error', { code: 4001, message: 'bad image', data: { why: 'x' } }]);
});

test('anything else thrown is -32603 naming the method; the stack is logged, never sent', async () => {
  const worker = quietWorker().method('boom', async () => {
    throw new Error('secret detail');
  });
  const session = recordingSession();
  await worker.serveJob(session, 'boom', delivery('{}'));
  assert.deepEqual(session.events[0].slice(2), ['error', { code: -32603, message: 'internal error: method boom failed' }]);
  assert.ok(!JSON.stringify(session.events).includes('secret detail'));
  const logged = worker.lines.find((line) => line.level === 'error');
  assert.match(logged.fields.error, /secret detail\n\s+at /);
  assert.equal(session.events.at(-1)[0], 'ack');
});

test('params that are not JSON are answered -32700 without running the handler', async () => {
  let ran = false;
  const worker = quietWorker().method('echo', () => {
    ran = true;
  });
  const session = recordingSession();
  await worker.serveJob(session, 'echo', delivery('not json{'));
  assert.equal(ran, false);
  assert.equal(session.events[0][2], 'error');
  assert.equal(session.events[0][3].code, -32700);
});

test('a result that cannot be encoded is answered -32603 for that call only', async () => {
  const worker = quietWorker().method('big', (params) => (params ? 10n : 'fine'));
  const session = recordingSession();
  await worker.serveJob(session, 'big', delivery('true'));
  await worker.serveJob(session, 'big', delivery('false'));
  const replies = session.events.filter(([kind]) => kind === 'publish').map((event) => event.slice(2));
  assert.equal(replies[0][1].code, -32603);
  assert.deepEqual(replies[1], ['ok', 'fine']);
});

test('a job past its deadline is acked without running or replying', async () => {
  let ran = false;
  const worker = quietWorker().method('echo', () => {
    ran = true;
  });
  const session = recordingSession();
  const message = delivery('1', { 'wsmq-deadline': Date.now() - 1 });
  await worker.serveJob(session, 'echo', message);
  assert.equal(ran, false);
  assert.deepEqual(session.events, [['ack', message.fields.deliveryTag]]);
});

test('a job cancelled before delivery is acked without running', async () => {
  let ran = false;
  const worker = quietWorker().method('echo', () => {
    ran = true;
  });
  const session = recordingSession();
  const message = delivery('1');
  worker.cancel(message.properties.correlationId, 'cancelled');
  await worker.serveJob(session, 'echo', message);
  assert.equal(ran, false);
  assert.deepEqual(session.events, [['ack', message.fields.deliveryTag]]);
});

test('a cancellation aborts the running job signal; nothing is sent, the job is acked', async () => {
  let seen;
  const worker = quietWorker().method('wait', (_params, job) =>
    new Promise((resolve) => {
      job.signal.addEventListener('abort', () => {
        seen = job.signal.reason;
        resolve('too late');
      });
    }),
  );
  const session = recordingSession();
  const message = delivery('1');
  const served = worker.serveJob(session, 'wait', message);
  await new Promise((resolve) => setImmediate(resolve));
  worker.cancel(message.properties.correlationId, 'cancelled');
  await served;
  assert.equal(seen.name, 'AbortError');
  assert.equal(seen.reason, 'cancelled');
  assert.deepEqual(session.events, [['ack', message.fields.deliveryTag]]);
});

test('the deadline aborts a running job signal', async () => {
  let reason;
  const worker = quietWorker().method('wait', (_params, job) =>
    new Promise((resolve) => {
      job.signal.addEventListener('abort', () => {
        reason = job.signal.reason.reason;
        resolve(1);
      });
    }),
  );
  const session = recordingSession();
  const message = delivery('1', { 'wsmq-deadline': Date.now() + 30 });
  await worker.serveJob(session, 'wait', message);
  assert.equal(reason, 'timeout');
  assert.deepEqual(session.events, [['ack', message.fields.deliveryTag]]);
});

test('the job carries its id, caller and deadline', async () => {
  let seen;
  const worker = quietWorker().method('who', (_params, job) => {
    seen = { id: job.id, caller: job.caller, deadline: job.deadline, method: job.method };
  });
  const deadline = Date.now() + 60_000;
  const message = delivery('1', { 'wsmq-caller': 'alice', 'wsmq-deadline': deadline });
  await worker.serveJob(recordingSession(), 'who', message);
  assert.deepEqual(seen, { id: message.properties.correlationId, caller: 'alice', deadline: new Date(deadline), method: 'who' });
});

test('progress that cannot be encoded throws in the handler; after the handler it is not sent', async () => {
  let late;
  const worker = quietWorker().method('p', (_params, job) => {
    late = job;
    assert.throws(() => job.progress(1n), TypeError);
    return 1;
  });
  const session = recordingSession();
  await worker.serveJob(session, 'p', delivery('1'));
  assert.equal(await late.progress('after'), false);
  assert.deepEqual(session.events.map(([kind, , status]) => [kind, status]), [['publish', 'ok'], ['ack', undefined]]);
});

test('a job without reply_to is acked unanswered', async () => {
  const worker = quietWorker().method('echo', (params) => params);
  const session = recordingSession();
  const message = delivery('1', {}, { replyTo: undefined });
  await worker.serveJob(session, 'echo', message);
  assert.deepEqual(session.events, [['ack', message.fields.deliveryTag]]);
});

test('a job delivered while the worker drains goes back to its queue unstarted', async () => {
  let ran = false;
  const worker = quietWorker().method('echo', () => {
    ran = true;
  });
  const session = recordingSession();
  session.stoppedTaking = true;
  const message = delivery('1');
  await worker.serveJob(session, 'echo', message);
  assert.equal(ran, false);
  assert.deepEqual(session.events, [['nack', message.fields.deliveryTag]]);
});

test('a configuration the worker cannot run with is refused before connecting', () => {
  assert.throws(() => quietWorker().validate(), /no method registered/);
  assert.throws(() => quietWorker().method('a', () => 1).method('a', () => 2), /registered twice/);
  assert.throws(() => quietWorker().method('', () => 1), WorkerConfigError);
  assert.throws(() => quietWorker({ concurrency: 0 }).method('a', () => 1).validate(), /concurrency/);
  assert.throws(() => quietWorker({ queueType: 'stream' }).method('a', () => 1).validate(), /queueType/);
  assert.throws(() => quietWorker().method('amq.x', () => 1).validate(), /reserved prefix/);
  assert.throws(() => quietWorker().method('m'.repeat(256), () => 1).validate(), /AMQP allows at most 255/);
  assert.throws(() => quietWorker({ amqp: 'http://x' }).method('a', () => 1).validate(), /no usable broker URL/);
});

test('an unusable URL in a list is named and skipped', () => {
  const worker = quietWorker({ amqp: 'nope, amqp://u:secret@h' }).method('a', () => 1);
  assert.deepEqual(worker.validate(), ['amqp://u:secret@h']);
  const skipped = worker.lines.find((line) => line.message === 'broker URL skipped');
  assert.deepEqual(skipped.fields, { position: 1, url: '<unparseable URL>', reason: 'is not a URL' });
});
