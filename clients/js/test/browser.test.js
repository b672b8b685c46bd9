// The page the gateway serves at `/`, in a real browser (Debian's chromium, driven by
// playwright-core; never a downloaded browser) against a real gateway, bridge, demo worker and
// RabbitMQ.
//
// Run by the Rust e2e test `clients::browser_page_sends_calls_and_shows_their_progress_and_results`,
// which starts the system and passes the gateway's address in WSMQ_HTTP_URL. By hand:
//   WSMQ_HTTP_URL=http://127.0.0.1:8080 node --test clients/js/test/browser.test.js
// WSMQ_SCREENSHOT_DIR (default: the system temp dir) receives page.png (calls running),
// page-done.png and page-phone.png.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';
import { Proxy } from './proxy.js';

const BASE = process.env.WSMQ_HTTP_URL;
assert.ok(BASE, 'WSMQ_HTTP_URL must name the gateway, e.g. http://127.0.0.1:8080');
const SHOTS = process.env.WSMQ_SCREENSHOT_DIR ?? os.tmpdir();
const CHROMIUM = process.env.WSMQ_CHROMIUM ?? '/usr/bin/chromium';
/** Longest wait for something the page should show. */
const WAIT_MS = 60_000;

let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
});

/** A fresh page on `url`, failing the test on any script error in it. */
async function open(url, viewport = { width: 1200, height: 860 }) {
  const page = await browser.newPage({ viewport });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`[page console] ${m.text()}`);
  });
  await page.goto(url);
  await page.waitForSelector('#state[data-state=open]', { timeout: WAIT_MS });
  page.errors = errors;
  return page;
}

async function send(page, method, params, count) {
  await page.fill('#method', method);
  await page.fill('#params', params);
  await page.fill('#count', String(count));
  await page.click('#send');
}

const finishedCount = () => document.querySelectorAll(
  '.call[data-state=ok], .call[data-state=error], .call[data-state=cancelled]').length;

test('the page sends 20 calls, shows progress moving, cancels one and shows every result',
  async () => {
    const page = await open(`${BASE}/`);

    // Calls 1-9: fib(1..9); 10: a worker error; 11-19: progress; 20: runs long enough to be
    // cancelled mid-way.
    await send(page, 'fib', '{"n": {{i}}}', 9);
    await send(page, 'fail', '{"why": "shown as an error"}', 1);
    await send(page, 'progress', '{"steps": 20, "ms": 150}', 9);
    await send(page, 'progress', '{"steps": 400, "ms": 50}', 1);
    assert.equal(await page.locator('.call').count(), 20);

    // A progress bar moves: call 20's bar is drawn past 0 while it runs.
    await page.waitForFunction(() => {
      const call = document.querySelector('.call[data-n="20"]');
      return call.dataset.state === 'running' && Number(call.dataset.progress) > 0;
    }, null, { timeout: WAIT_MS });
    const width = await page.locator('.call[data-n="20"] .fill').evaluate(
      (e) => e.getBoundingClientRect().width);
    assert.ok(width > 0, 'the bar of call 20 is drawn past 0');
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(SHOTS, 'page.png') });

    await page.click('.call[data-n="20"] button.cancel');

    await page.waitForFunction((n) => document.querySelectorAll(
      '.call[data-state=ok], .call[data-state=error], .call[data-state=cancelled]').length === n,
    20, { timeout: WAIT_MS });
    assert.equal(await page.evaluate(finishedCount), 20);
    assert.equal(await page.locator('.call[data-state=ok]').count(), 18);
    assert.equal(await page.locator('.call[data-n="10"]').getAttribute('data-state'), 'error');
    assert.match(await page.locator('.call[data-n="10"] .status').textContent(), /4000/);
    assert.equal(await page.locator('.call[data-n="20"]').getAttribute('data-state'), 'cancelled');
    // Each result is its own call's.
    const fib = [1, 1, 2, 3, 5, 8, 13, 21, 34];
    for (let i = 1; i <= 9; i++) {
      const text = await page.locator(`.call[data-n="${i}"] .result`).textContent();
      assert.equal(text, String(fib[i - 1]), `call ${i} is fib(${i})`);
    }
    for (let n = 11; n <= 19; n++) {
      const text = await page.locator(`.call[data-n="${n}"] .result`).textContent();
      assert.deepEqual(JSON.parse(text), { done: 20 });
      assert.equal(await page.locator(`.call[data-n="${n}"]`).getAttribute('data-progress'), '1');
    }
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(SHOTS, 'page-done.png') });

    // Phone-sized: nothing sticks out sideways.
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone screen`);
    await page.screenshot({ path: path.join(SHOTS, 'page-phone.png') });

    assert.deepEqual(page.errors, []);
    await page.close();
  });

test('a page whose connection drops reconnects, resumes its session and loses no result',
  async () => {
    const proxy = await Proxy.start(new URL(BASE).host);
    const page = await open(`http://127.0.0.1:${proxy.port}/`);
    await send(page, 'progress', '{"steps": 8, "ms": 150}', 3);
    await page.waitForFunction(() => Number(document.querySelector('.call[data-n="1"]').dataset.progress) > 0,
      null, { timeout: WAIT_MS });
    const connections = proxy.accepted;
    proxy.cut();
    await page.waitForFunction((n) => document.querySelectorAll('.call[data-state=ok]').length === n,
      3, { timeout: WAIT_MS });
    assert.equal(await page.locator('#state').getAttribute('data-state'), 'open');
    assert.ok(proxy.accepted > connections, 'the page connected again');
    for (let n = 1; n <= 3; n++) {
      const text = await page.locator(`.call[data-n="${n}"] .result`).textContent();
      assert.deepEqual(JSON.parse(text), { done: 8 });
    }
    assert.deepEqual(page.errors, []);
    await page.close();
    await proxy.close();
  });
