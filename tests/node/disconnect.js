// The seed's app, plus: a request for /leave is answered, then the worker
// leaves by itself (cluster.worker.disconnect()).
const cluster = require('cluster');
const http = require('http');

http.createServer((req, res) => {
  res.writeHead(200, { 'X-Worker': String(cluster.worker.id) });
  res.end('hello world\n');
  if (req.url === '/leave') {
    cluster.worker.disconnect();
  }
}).listen(Number(process.env.PORT || 8000), process.env.HOST || undefined);
