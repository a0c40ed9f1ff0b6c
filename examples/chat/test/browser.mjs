// The chat example in a real browser (Debian's Chromium, driven by
// playwright-core): two users of one tenant and one of another, a broker
// restart, expiring tokens and a broker that refuses the page's origin.
//
//   node test/browser.mjs <broker binary> <artifacts directory>
//
// Run by tests/browser.rs; exits non-zero on the first failed expectation.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [binary, artifacts] = process.argv.slice(2);
const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
fs.mkdirSync(artifacts, { recursive: true });
const db = fs.mkdtempSync(path.join(os.tmpdir(), 'broker-chat-'));

function check(ok, what) {
  if (!ok) throw new Error(`expected ${what}`);
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function until(what, probe, limit = 10000) {
  const deadline = Date.now() + limit;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// The page, served from its own port: the broker sees a foreign origin.
const pagePort = await freePort();
const files = { '/': ['index.html', 'text/html'], '/dist/app.js': ['dist/app.js', 'text/javascript'] };
const pages = http.createServer((request, response) => {
  const [file, type] = files[new URL(request.url, 'http://x').pathname] ?? [];
  if (!file) return response.writeHead(404).end();
  response.writeHead(200, { 'content-type': type }).end(fs.readFileSync(path.join(root, file)));
});
await new Promise((resolve) => pages.listen(pagePort, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${pagePort}`;

const brokerPort = await freePort();
const brokerUrl = `http://127.0.0.1:${brokerPort}`;
let broker = null;
async function startBroker(...args) {
  broker = spawn(binary, [`--db=${db}/db`, `--port=${brokerPort}`, '--ntp_servers=',
    '--admin_token=admin-token', '--keep_alive=1', ...args], { stdio: 'ignore' });
  await until('the broker to serve', async () => {
    try {
      return (await fetch(`${brokerUrl}/`)).ok;
    } catch {
      return false;
    }
  });
}
async function stopBroker() {
  broker.kill('SIGTERM');
  await once(broker, 'exit');
}

await startBroker(`--origin=${origin}`, '--jwt_secret=first-secret');
for (const [username, tenant_name] of [['alice', 'team'], ['bob', 'team'], ['carol', 'other']]) {
  const body = { admin_token: 'admin-token', username, password: `${username}-pw`, tenant_name };
  const created = await fetch(`${brokerUrl}/create_user`, { method: 'POST', body: JSON.stringify(body) });
  check(created.ok, `to create ${username}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  async function open(username) {
    const context = await browser.newContext({ viewport: { width: 720, height: 640 } });
    const page = await context.newPage();
    await page.goto(`${origin}/?broker=${encodeURIComponent(brokerUrl)}&keepalive=1`);
    await page.fill('#username', username);
    await page.fill('#password', `${username}-pw`);
    await page.click('#login button');
    return page;
  }
  const connected = (page) => page.waitForSelector('#status:text("Connected")', { timeout: 15000 });
  const messages = (page) => page.$$eval('#messages li', (items) => items.map((item) => item.textContent));
  const say = async (page, text) => {
    await page.fill('#text', text);
    await page.click('#send button');
    await page.waitForFunction(() => document.querySelector('#text').value === '', null, { timeout: 10000 });
  };
  const shows = (page, texts) =>
    until(`${texts.length} messages on a page`, async () => JSON.stringify(await messages(page)) === JSON.stringify(texts));

  const alice = await open('alice');
  const bob = await open('bob');
  const carol = await open('carol');
  await Promise.all([connected(alice), connected(bob), connected(carol)]);

  // Live, in the same order for both, and never in another tenant.
  const started = Date.now();
  await say(alice, 'héllo Bob 👋 — Zoë says hi');
  const first = ['alicehéllo Bob 👋 — Zoë says hi'];
  await shows(bob, first);
  check(Date.now() - started < 1000, `Bob to see Alice's message within a second (${Date.now() - started} ms)`);
  await say(bob, 'hi Alice ✓');
  const second = [...first, 'bobhi Alice ✓'];
  await Promise.all([shows(alice, second), shows(bob, second)]);

  // A broker restart: both pages resume, nothing lost or shown twice.
  await stopBroker();
  await startBroker(`--origin=${origin}`, '--jwt_secret=first-secret');
  await Promise.all([connected(alice), connected(bob)]);
  await say(bob, 'after the restart');
  const third = [...second, 'bobafter the restart'];
  await Promise.all([shows(alice, third), shows(bob, third)]);

  // Tokens that expire every 3 s (and, under a new secret, old ones that no
  // longer work): the pages log in again with the session's credentials.
  await stopBroker();
  await startBroker(`--origin=${origin}`, '--jwt_secret=second-secret', '--jwt_expiry=3');
  await Promise.all([connected(alice), connected(bob)]);
  await new Promise((resolve) => setTimeout(resolve, 4500));
  await say(alice, 'one');
  await new Promise((resolve) => setTimeout(resolve, 3500));
  await say(bob, 'two');
  const fourth = [...third, 'aliceone', 'bobtwo'];
  await Promise.all([shows(alice, fourth), shows(bob, fourth)]);
  check((await messages(carol)).length === 0, 'no message of the team to reach another tenant');
  await alice.screenshot({ path: path.join(artifacts, 'alice.png') });
  await bob.screenshot({ path: path.join(artifacts, 'bob.png') });
  await carol.screenshot({ path: path.join(artifacts, 'carol.png') });

  // A broker that allows another origin: the browser blocks the page's
  // requests, and the page says so.
  await stopBroker();
  await startBroker('--origin=https://elsewhere.example', '--jwt_secret=second-secret');
  const blocked = await open('alice');
  await blocked.waitForSelector('#status.error:text("CORS")', { timeout: 10000 });
  await blocked.screenshot({ path: path.join(artifacts, 'blocked.png') });
  console.log('browser test passed; screenshots in', artifacts);
} finally {
  await browser.close();
  if (broker.exitCode === null) await stopBroker();
  pages.close();
  fs.rmSync(db, { recursive: true, force: true });
}
