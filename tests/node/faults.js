// Bad input from some workers: worker 1 writes a line that is not JSON on
// its channel (fd 3, Node's NODE_CHANNEL_FD), worker 2 sends a message
// longer than the primary's limit; the others say hello and echo.
const cluster = require('cluster');
const fs = require('fs');

const id = cluster.worker.id;
process.on('message', (m) => process.send({ echo: m, from: id }));
if (id === 1) {
  fs.writeSync(3, '{"cmd":"NODE_CLUSTER", this is not JSON\n');
} else if (id === 2) {
  process.send({ big: 'x'.repeat(Number(process.env.BIG || 100000)) });
} else {
  process.send({ hello: id });
}
// The 'message' listener keeps the channel, and so the worker, up until
// the primary disconnects it.
