// Connects to a broker with the real broker-client package, listens for the
// event names given on the command line with addEventListener, and prints one
// JSON line per event received, then "closed" when the server ends the stream.
import BrokerClient from 'broker-client';

const [url, jwt, ...names] = process.argv.slice(2);
const client = new BrokerClient(url, { headers: { authorization: `Bearer ${jwt}` } });
for (const name of names) {
  client.addEventListener(name, (message) => {
    const line = { event: message.type, id: message.lastEventId, data: JSON.parse(message.data) };
    process.stdout.write(JSON.stringify(line) + '\n');
  });
}
client.onclose = () => {
  process.stdout.write('closed\n');
  process.exit(0);
};
setTimeout(() => {
  process.stderr.write('timed out\n');
  process.exit(1);
}, 20000);
