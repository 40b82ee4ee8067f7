// Messages both ways: says hello when up, echoes what the primary sends,
// and listens on port 0 of 127.0.0.1 (every worker gets the same port).
const cluster = require('cluster');
const http = require('http');

if (cluster.isPrimary) {
  throw new Error('run under a uvring primary');
}
const id = cluster.worker.id;
process.on('message', (m) => process.send({ echo: m, from: id }));
http.createServer((req, res) => res.end('hi\n')).listen(0, '127.0.0.1', () => {
  process.send({ hello: id });
});
