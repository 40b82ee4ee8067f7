// Node's own `cluster` module: a primary and N workers, each an HTTP/1.1
// server answering "hello world" (keep-alive unless the client asks for
// `Connection: close`).
//
//   node node_cluster.js --workers 2 --port 8080
//
// Scheduling: Node's default is round-robin (the primary accepts and hands
// each connection to a worker); NODE_CLUSTER_SCHED_POLICY=none makes the
// workers share the listening socket and accept themselves ("shared").
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const workers = parseInt(arg('--workers', '2'), 10);
const port = parseInt(arg('--port', '8080'), 10);

if (cluster.isPrimary) {
  let listening = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => {
    listening += 1;
    if (listening === workers) {
      const policy = cluster.schedulingPolicy === cluster.SCHED_RR ? 'rr' : 'none';
      console.log(`node cluster: ${workers} workers listening on ${port} (policy ${policy})`);
    }
  });
  cluster.on('exit', (w, code, signal) => {
    if (!process.exitCode) console.error(`node cluster: worker ${w.process.pid} exited (${code}, ${signal})`);
  });
  const stop = () => {
    process.exitCode = 0;
    for (const id in cluster.workers) cluster.workers[id].kill();
    setTimeout(() => process.exit(0), 500).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const body = 'hello world';
  http
    .createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
      res.end(body);
    })
    .listen(port, '127.0.0.1');
}
