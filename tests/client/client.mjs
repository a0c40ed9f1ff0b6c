// Connects to a broker with the real broker-client package and prints one
// JSON line per callback: {"via":"onmessage",…} for every onmessage call
// (which broker-client makes for every message it parses, so a keep-alive
// it took for a message shows as one with no event and no data), and
// {"via":"listener",…} for each event of a name given on the command line
// (addEventListener); then "closed" when the server ends the stream.
import BrokerClient from 'broker-client';

const [url, jwt, ...names] = process.argv.slice(2);
const client = new BrokerClient(url, { headers: { authorization: `Bearer ${jwt}` } });
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');
client.onmessage = (message) => {
  print({ via: 'onmessage', event: message.type, id: message.lastEventId, data: message.data });
};
for (const name of names) {
  client.addEventListener(name, (message) => {
    print({ via: 'listener', event: message.type, id: message.lastEventId, data: JSON.parse(message.data) });
  });
}
client.onclose = () => {
  process.stdout.write('closed\n');
  process.exit(0);
};
setTimeout(() => {
  process.stderr.write('timed out\n');
  process.exit(1);
}, 30000);
