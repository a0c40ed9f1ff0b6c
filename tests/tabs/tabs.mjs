// Ten tabs of one Chromium profile (Debian's Chromium, driven by
// playwright-core), each on a page of one broker served over HTTPS, each with
// its own stream: one live event must reach all ten. Over HTTP/1.1 a browser
// opens at most six connections per site, and every further stream waits
// for one of them, silently; over HTTP/2 all ten share one connection.
//
//   node tests/tabs/tabs.mjs <port> <CA file> <admin token>
//
// Run by tests/tabs.rs against a broker it started with a test certificate
// for localhost. Prints how many tabs got a response and the event, and the
// HTTP version Chromium used; exits non-zero unless all ten got the event.
// playwright-core comes from examples/chat, which scripts/setup-tests.sh
// installs.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(new URL('../../examples/chat/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const [port, caFile, adminToken] = process.argv.slice(2);
const ca = fs.readFileSync(caFile);
const origin = `https://localhost:${port}`;
const TABS = 10;

/// A POST to the broker from Node, trusting only the test CA.
function post(pathname, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const request = https.request(
      { host: 'localhost', port, path: pathname, method: 'POST', ca, agent: false, headers },
      (response) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk) => (text += chunk));
        response.on('end', () => {
          if (response.statusCode !== 200) reject(new Error(`${pathname}: ${response.statusCode} ${text}`));
          else resolve(JSON.parse(text));
        });
      },
    );
    request.on('error', reject);
    request.setTimeout(15000, () => request.destroy(new Error(`${pathname} timed out`)));
    request.end(JSON.stringify(body));
  });
}

/// Polls `probe` until it returns true or `limit` ms have passed; returns
/// whether it came true.
async function until(probe, limit) {
  const deadline = Date.now() + limit;
  for (;;) {
    if (await probe()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/// Tally of values, e.g. `h2 ×10` or `http/1.1 ×6, none ×4`.
const tally = (values) =>
  Object.entries(values.reduce((counts, value) => ({ ...counts, [value]: (counts[value] ?? 0) + 1 }), {}))
    .map(([value, count]) => `${value} ×${count}`)
    .join(', ');

await post('/create_user', { admin_token: adminToken, username: 'tabs', password: 'tabs-pw', tenant_name: 'tabs' });
const { jwt } = await post('/login', { username: 'tabs', password: 'tabs-pw' });

// One profile: a persistent context on its own user data directory. Its
// certificate is the test CA's, which this profile does not know.
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'broker-tabs-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  ignoreHTTPSErrors: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let passed = false;
try {
  const pages = [...context.pages().slice(0, 1)];
  while (pages.length < TABS) pages.push(await context.newPage());
  // The HTTP version of each tab's stream, as Chromium's network stack saw it.
  const protocols = pages.map(() => 'none');
  await Promise.all(pages.map(async (page, tab) => {
    const session = await context.newCDPSession(page);
    session.on('Network.responseReceived', ({ response }) => {
      if (new URL(response.url).pathname === '/sse') protocols[tab] = response.protocol;
    });
    await session.send('Network.enable');
  }));
  // Every page first (the broker's `/` answers JSON; the page is only the
  // origin), so no navigation waits behind a stream.
  await Promise.all(pages.map((page) => page.goto(`${origin}/`)));
  const pageProtocols = await Promise.all(pages.map((page) =>
    page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol || 'none')));

  // Each tab opens /sse with fetch and reads its frames.
  await Promise.all(pages.map((page) => page.evaluate((jwt) => {
    const tab = (window.tab = { status: null, events: [], error: null });
    (async () => {
      const response = await fetch('/sse', { headers: { authorization: `Bearer ${jwt}` } });
      tab.status = response.status;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let rest = '';
      let fields = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return void (tab.error = 'the stream ended');
        const lines = (rest + value).split('\n');
        rest = lines.pop();
        for (const line of lines) {
          if (line === '') {
            if (fields.event !== undefined) tab.events.push(fields);
            fields = {};
          } else if (!line.startsWith(':')) {
            const colon = line.indexOf(':');
            fields[line.slice(0, colon)] = line.slice(colon + 1).replace(/^ /, '');
          }
        }
      }
    })().catch((error) => (tab.error = String(error)));
  }, jwt)));
  const states = (nonce) => Promise.all(pages.map((page) => page.evaluate((nonce) => ({
    status: window.tab.status,
    error: window.tab.error,
    live: window.tab.events.some((event) => event.event === 'live' && JSON.parse(event.data).nonce === nonce),
  }), nonce)));

  // Every stream that can open has its response head within 15 s.
  let responded = [];
  await until(async () => (responded = (await states(null)).filter((tab) => tab.status !== null)).length === TABS, 15000);
  const ok = responded.filter((tab) => tab.status === 200).length;

  // One live event; every tab whose stream is open gets it within 15 s.
  const nonce = `${Date.now()}-${Math.random()}`;
  const { id } = await post('/insert', { event: 'live', data: { nonce } }, { authorization: `Bearer ${jwt}` });
  let last = [];
  await until(async () => (last = await states(nonce)).every((tab) => tab.live), 15000);
  const live = last.filter((tab) => tab.live).length;
  const errors = last.map((tab, index) => tab.error && `tab ${index + 1}: ${tab.error}`).filter(Boolean);

  console.log(`tabs live: ${live}/${TABS} got event ${id} (responses: ${responded.length}/${TABS}, ${ok} of them 200)`);
  console.log(`HTTP version of the streams: ${tally(protocols)}; of the pages: ${tally(pageProtocols)}`);
  if (errors.length) console.log(`errors: ${errors.join('; ')}`);
  passed = live === TABS;
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
if (!passed) {
  console.error(`expected all ${TABS} tabs of one profile to receive the live event`);
  process.exit(1);
}
