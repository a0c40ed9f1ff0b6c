// node_modules/broker-client/utils.js
function parseChunkToStringEvent(event, init = [{ message: "", complete: false }]) {
  try {
    return event.reduce((prev, curr, index, array) => {
      if (String.fromCharCode(curr) === "\n") {
        if (String.fromCharCode(array[index + 1]) === "\n") {
          prev[prev.length - 1].complete = true;
          return [...prev, { message: "", complete: false }];
        }
        return prev;
      }
      prev[prev.length - 1].message = prev[prev.length - 1].message + String.fromCharCode(array[index]);
      return prev;
    }, init);
  } catch (error) {
    throw error;
  }
}
function parseStringEventToObject(stringEvent) {
  const DATA = "data";
  const EVENT = "event";
  const ID = "id";
  const RETRY = "retry";
  const indexOfData = stringEvent.indexOf(DATA + ":");
  const indexOfEvent = stringEvent.indexOf(EVENT + ":");
  const indexOfId = stringEvent.indexOf(ID + ":");
  const indexOfRetry = stringEvent.indexOf(RETRY + ":");
  const keys = [
    { key: DATA, index: indexOfData },
    { key: EVENT, index: indexOfEvent },
    { key: ID, index: indexOfId },
    { key: RETRY, index: indexOfRetry }
  ];
  const objectEvent = keys.sort((a, b) => a.index - b.index).reduce((prev, curr, index) => {
    const next = Object.assign({}, prev);
    if (index + 1 < keys.length) {
      next[curr.key] = stringEvent.slice(curr.index + curr.key.length + 1, keys[index + 1].index);
    } else {
      next[curr.key] = stringEvent.slice(curr.index + curr.key.length + 1);
    }
    return next;
  }, {});
  return objectEvent;
}

// node_modules/broker-client/index.js
var BrokerClient = class _BrokerClient {
  constructor(url2, init) {
    this.readState = _BrokerClient.CONNECTING;
    this.controller = new AbortController();
    this.listeners = [];
    this.stringMessagesQueue = [];
    const signal = this.controller.signal;
    fetch(url2, Object.assign({ signal }, init)).then((response) => {
      if (!response.body)
        throw new Error("No body");
      this.reader = response.body.getReader();
      this.start(this.reader);
    }).catch((error) => {
      console.error(error);
      throw error;
    });
  }
  _onOpen() {
    this.readState = _BrokerClient.OPEN;
    this.onopen && this.onopen(new Event("open"));
  }
  _onClosed() {
    this.readState = _BrokerClient.CLOSED;
    this.onclose && this.onclose();
  }
  _onMessage(objectEvent) {
    objectEvent.id && objectEvent.id !== "" && (this.lastEventID = objectEvent.id);
    const messageEvent = new MessageEvent(objectEvent.event, {
      data: objectEvent.data,
      lastEventId: this.lastEventID
    });
    this.onmessage && this.onmessage(messageEvent);
    this.listeners[objectEvent.event] && this.newMethod(objectEvent)(messageEvent);
  }
  newMethod(objectEvent) {
    return this.listeners[objectEvent.event];
  }
  async start(reader) {
    while (true) {
      const { done, value } = await reader.read();
      this._onOpen();
      if (done) {
        this._onClosed();
        break;
      }
      const filteredQueue = this.stringMessagesQueue.filter((m) => !m.complete);
      this.stringMessagesQueue = parseChunkToStringEvent(value, filteredQueue.length > 0 ? filteredQueue : void 0);
      this.stringMessagesQueue.filter((m) => m.complete).map((m) => parseStringEventToObject(m.message)).forEach((m) => {
        this._onMessage(m);
      });
    }
    reader.releaseLock();
  }
  close() {
    this.reader.cancel();
  }
  addEventListener(eventType, callback) {
    this.listeners[eventType] = callback;
  }
  removeEventListener(eventType) {
    delete this.listeners[eventType];
  }
};
BrokerClient.CONNECTING = 0;
BrokerClient.OPEN = 1;
BrokerClient.CLOSED = 2;
var broker_client_default = BrokerClient;

// client.mjs
var [url, jwt, ...names] = process.argv.slice(2);
var client = new broker_client_default(url, { headers: { authorization: `Bearer ${jwt}` } });
for (const name of names) {
  client.addEventListener(name, (message) => {
    const line = { event: message.type, id: message.lastEventId, data: JSON.parse(message.data) };
    process.stdout.write(JSON.stringify(line) + "\n");
  });
}
client.onclose = () => {
  process.stdout.write("closed\n");
  process.exit(0);
};
setTimeout(() => {
  process.stderr.write("timed out\n");
  process.exit(1);
}, 2e4);
