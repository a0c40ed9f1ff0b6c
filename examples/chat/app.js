// A chat room on Broker, with no backend code of its own: log in, open the
// event stream with broker-client, show what it delivers, insert messages.
//
// Where the broker is comes from the query string (?broker=http://host:port),
// since the page is served from another origin than the broker.
import BrokerClient from 'broker-client';

const query = new URLSearchParams(location.search);
const broker = query.get('broker') || 'http://127.0.0.1:8080';
const $ = (id) => document.getElementById(id);

// The session. The credentials stay in memory, for this page's life only,
// so that an expired token is renewed without asking again; nothing is
// written to storage, where another script or a later visitor could read it.
let credentials = null;
let jwt = null;
// The highest event id shown: duplicates are ignored, and a reconnect asks
// the broker for everything after it (Last-Event-ID).
let lastId = 0;
// Each connection attempt has a number, so callbacks of an old stream are
// ignored once a newer one exists.
let attempt = 0;
let stream = null;
let backoff = 500;

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
}

function json(body) {
  return { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
}

// fetch rejects with a TypeError when it cannot reach the broker at all:
// the broker is down, or it does not allow this page's origin (CORS).
function unreachable(error) {
  return error instanceof TypeError;
}

async function login() {
  const response = await fetch(`${broker}/login`, json(credentials));
  const body = await response.json();
  if (!response.ok) throw Object.assign(new Error(body.error), { status: response.status });
  jwt = body.jwt;
}

function show(id, message) {
  if (id <= lastId) return;
  lastId = id;
  const item = document.createElement('li');
  const from = document.createElement('b');
  from.textContent = message.from;
  item.append(from, message.text);
  $('messages').append(item);
}

function reconnect(reason) {
  const mine = ++attempt;
  try {
    stream?.close();
  } catch {
    // A stream whose request never got an answer has nothing to close.
  }
  stream = null;
  status(`${reason}; reconnecting in ${backoff / 1000} s…`);
  setTimeout(() => mine === attempt && connect(), backoff);
  backoff = Math.min(backoff * 2, 5000);
}

async function connect() {
  const mine = ++attempt;
  try {
    // A token that no longer works (expired, or signed by another secret)
    // is replaced by a fresh login with the credentials of this session.
    const check = await fetch(`${broker}/verify`, { headers: { authorization: `Bearer ${jwt}` } });
    if (check.status === 401) await login();
    else if (!check.ok) throw new Error(`the broker answered ${check.status}`);
  } catch (error) {
    if (error.status === 401) return status(`Log in failed: ${error.message}`, true);
    const reason = unreachable(error)
      ? `Cannot reach the broker at ${broker}: it is down, or it does not allow this page's origin (CORS)`
      : `Trouble with the broker: ${error.message}`;
    status(reason, true);
    return reconnect(reason);
  }
  if (mine !== attempt) return;
  const headers = { authorization: `Bearer ${jwt}`, 'last-event-id': String(lastId) };
  stream = new BrokerClient(`${broker}/sse`, { headers });
  stream.addEventListener('chat', (event) => {
    if (mine === attempt) show(Number(event.lastEventId), JSON.parse(event.data));
  });
  // broker-client never reconnects by itself: the broker ended the stream
  // (token expired, restart, a client too far behind), so connect again,
  // after a pause, from the last event shown.
  stream.onclose = () => mine === attempt && reconnect('The stream ended');
  backoff = 500;
  status(`Connected as ${credentials.username}`);
  $('chat').hidden = false;
}

// A stream that breaks rather than ends (its request failed, or its
// connection was cut: a crash, a network change, a dead connection found by
// the browser's TCP keep-alive) gets no onclose: broker-client leaves it as
// a promise rejection that nothing handles. Take any such rejection, while
// a stream is open, for a broken stream. (reconnect drops the stream first,
// so the rejection of closing a broken one is not taken for another.)
addEventListener('unhandledrejection', () => stream && reconnect('The stream broke'));

$('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  credentials = { username: $('username').value, password: $('password').value };
  try {
    await login();
  } catch (error) {
    const reason = unreachable(error)
      ? `Cannot reach the broker at ${broker}: it is down, or it does not allow this page's origin (CORS)`
      : `Log in failed: ${error.message}`;
    return status(reason, true);
  }
  $('login').hidden = true;
  connect();
});

$('send').addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = $('text').value;
  const insert = () =>
    fetch(`${broker}/insert`, {
      ...json({ event: 'chat', data: { from: credentials.username, text } }),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${jwt}` },
    });
  try {
    let response = await insert();
    if (response.status === 401) {
      await login();
      response = await insert();
    }
    if (!response.ok) throw new Error((await response.json()).error);
    // The message appears when the stream delivers it, like everyone's.
    $('text').value = '';
  } catch (error) {
    status(`Not sent (${unreachable(error) ? 'broker unreachable' : error.message}); try again`, true);
  }
});
