// The call console served at `/`: sends calls through wsmq.js and shows each one's progress and
// result as it arrives. Everything the page knows about a call lives in its list item.

import { connect, wsUrlFor, codes } from '/wsmq.js';

const $ = (id) => document.getElementById(id);
const PRESETS = {
  echo: '{"hello": "wsmq", "n": {{i}}}',
  sleep: '{"ms": 1000}',
  progress: '{"steps": 10, "ms": 300}',
  fib: '{"n": {{i}}}',
  fail: '{"why": "a demo failure"}',
};
/** Finished calls kept on the page; older ones are removed first. */
const MAX_FINISHED = 300;
/** Pause before trying again when the gateway cannot be reached at all. */
const RETRY_CONNECT_MS = 2000;

let client = null;
let sent = 0;
const live = new Map(); // call number -> { el, abort, started }

// ---- connection ----

function showState(state, info = {}) {
  const el = $('state');
  el.dataset.state = state;
  const words = {
    connecting: 'connecting…',
    open: 'connected',
    reconnecting: `reconnecting${info.attempt ? ` (attempt ${info.attempt + 1})` : ''}…`,
    closed: 'disconnected',
  };
  let text = words[state] ?? state;
  if (state === 'open' && client?.session) text += ` · session ${client.session.slice(0, 6)}`;
  if (info.lost) text += ` · ${info.lost} call(s) lost`;
  el.textContent = text;
  $('send').disabled = false;
}

async function start() {
  showState('connecting');
  for (;;) {
    try {
      // A gateway that requires a token: open the page as /?token=… and it is passed on.
      const token = new URLSearchParams(location.search).get('token') ?? undefined;
      client = await connect(wsUrlFor(location), { token, onState: showState });
      showState(client.state);
      return;
    } catch (e) {
      showState('closed');
      await new Promise((r) => setTimeout(r, RETRY_CONNECT_MS));
    }
  }
}

// ---- the form ----

let paramsTouched = false;
$('params').addEventListener('input', () => {
  paramsTouched = true;
  checkParams();
});
$('method').addEventListener('input', () => {
  const preset = PRESETS[$('method').value.trim()];
  if (preset && !paramsTouched) {
    $('params').value = preset;
    checkParams();
  }
});

/** The params for call `i`, or throws with a message for the user. */
function paramsFor(i) {
  const text = $('params').value.trim();
  if (text === '') return undefined;
  const value = JSON.parse(text.replaceAll('{{i}}', String(i)));
  if (value === null || typeof value !== 'object') {
    throw new Error('params must be a JSON object or array');
  }
  return value;
}

function checkParams() {
  const hint = $('params-hint');
  try {
    paramsFor(1);
    $('params').removeAttribute('aria-invalid');
    hint.classList.remove('error');
    hint.innerHTML = 'With several calls, <code>{{i}}</code> becomes the call\'s number (1, 2, …).';
    return true;
  } catch (e) {
    $('params').setAttribute('aria-invalid', 'true');
    hint.classList.add('error');
    hint.textContent = e.message;
    return false;
  }
}

$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (!client || !checkParams()) return;
  const method = $('method').value.trim();
  if (!method) return;
  const count = Math.min(500, Math.max(1, Number($('count').value) || 1));
  const timeoutMs = Math.max(1, Number($('timeout').value) || 30000);
  const priority = $('priority').value === '' ? undefined : Number($('priority').value);
  for (let i = 1; i <= count; i++) send(method, paramsFor(i), { timeoutMs, priority });
});

$('cancel-all').addEventListener('click', () => {
  for (const call of live.values()) call.abort.abort();
});

$('clear').addEventListener('click', () => {
  for (const el of [...$('calls').children]) {
    if (el.dataset.state !== 'running') el.remove();
  }
  updateStats();
});

// ---- calls ----

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function send(method, params, options) {
  const n = ++sent;
  const item = el('li', 'call indeterminate');
  item.dataset.n = String(n);
  item.dataset.state = 'running';
  item.dataset.progress = '0';
  const top = el('div', 'call-top');
  const cancel = el('button', 'cancel', 'Cancel');
  cancel.type = 'button';
  top.append(el('span', 'num', `#${n}`), el('span', 'method', method),
    el('span', 'params', params === undefined ? '' : JSON.stringify(params)),
    el('span', 'status', 'running'), el('span', 'elapsed', '0.0 s'), cancel);
  const bar = el('div', 'bar');
  bar.append(el('div', 'fill'));
  item.append(top, bar, el('div', 'progress-text'), el('pre', 'result'));
  $('calls').prepend(item);

  const abort = new AbortController();
  cancel.addEventListener('click', () => abort.abort());
  const started = performance.now();
  live.set(n, { el: item, abort, started });
  updateStats();

  // Held by the gateway for fair share (another caller's calls go first): "queued".
  const queued = (q) => {
    if (live.has(n)) item.querySelector('.status').textContent = q ? 'queued' : 'running';
  };
  client.call(method, params,
    { ...options, signal: abort.signal, onProgress: (v) => progress(item, v), onQueued: queued })
    .then((result) => finish(n, 'ok', 'ok', show(result)))
    .catch((e) => {
      const state = e.code === codes.CANCELLED ? 'cancelled' : 'error';
      const label = e.code === codes.CANCELLED ? 'cancelled' : `error ${e.code}`;
      const data = e.data === undefined ? '' : `\n${show(e.data)}`;
      finish(n, state, label, `${e.message}${data}`);
    });
}

/** Where a progress value puts the bar, 0..1, or null when it says no amount. */
function fraction(value) {
  if (typeof value === 'number') return value >= 0 && value <= 1 ? value : null;
  if (value && typeof value === 'object') {
    if (Number.isFinite(value.step) && Number.isFinite(value.of) && value.of > 0) {
      return Math.min(1, value.step / value.of);
    }
    if (Number.isFinite(value.percent)) return Math.min(1, value.percent / 100);
  }
  return null;
}

function progress(item, value) {
  const f = fraction(value);
  item.querySelector('.progress-text').textContent = JSON.stringify(value);
  if (f === null) return;
  item.classList.remove('indeterminate');
  item.dataset.progress = String(f);
  item.querySelector('.fill').style.width = `${(f * 100).toFixed(1)}%`;
}

function finish(n, state, label, text) {
  const call = live.get(n);
  if (!call) return;
  live.delete(n);
  const item = call.el;
  item.dataset.state = state;
  item.classList.remove('indeterminate');
  if (state === 'ok') {
    item.dataset.progress = '1';
    item.querySelector('.fill').style.width = '100%';
  }
  item.querySelector('.status').textContent = label;
  item.querySelector('.elapsed').textContent = seconds(performance.now() - call.started);
  item.querySelector('button.cancel').remove();
  item.querySelector('.result').textContent = text;
  trim();
  updateStats();
}

/** JSON on one line when it is short, indented when not. */
function show(value) {
  const line = JSON.stringify(value);
  return line.length <= 80 ? line : JSON.stringify(value, null, 2);
}

function seconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function trim() {
  const finished = [...$('calls').children].filter((e) => e.dataset.state !== 'running');
  for (const e of finished.slice(MAX_FINISHED)) e.remove();
}

function updateStats() {
  const items = [...$('calls').children];
  const count = (s) => items.filter((e) => e.dataset.state === s).length;
  $('stats').innerHTML = `<b>${live.size}</b> running · <b>${count('ok')}</b> ok · `
    + `<b>${count('error')}</b> failed · <b>${count('cancelled')}</b> cancelled`;
  $('cancel-all').disabled = live.size === 0;
}

setInterval(() => {
  const now = performance.now();
  for (const { el: item, started } of live.values()) {
    item.querySelector('.elapsed').textContent = seconds(now - started);
  }
}, 200);

updateStats();
checkParams();
start();
