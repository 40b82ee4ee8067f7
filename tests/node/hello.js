// The seed's app: Node's own cluster example. Under uvring-node every
// process is a worker, so the worker branch runs. PORT picks the port
// (0: any free one, shared by every worker); HOST the address.
const cluster = require('cluster');
const http = require('http');

if (cluster.isPrimary) {
  for (let i = 0; i < 2; i++) cluster.fork();
} else {
  const port = Number(process.env.PORT || 8000);
  http.createServer((req, res) => {
    res.writeHead(200, { 'X-Worker': String(cluster.worker.id) });
    res.end('hello world\n');
  }).listen(port, process.env.HOST || undefined);
}
