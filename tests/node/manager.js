// The seed's shared memory client (`User`), unchanged: set and get through
// the primary's `Manager` (here uvring's primary and its store). Each
// worker sets its key, reads it back, then reads every other worker's key
// until all are there, and reports.
const cluster = require('cluster');

var User = function() {
    var self = this;
    self.__uuid__ = 0;
    self.__getCallbacks__ = {};
    process.on('message', function(data) {
        if (!data.isSharedMemoryMessage) return;
        var cb = self.__getCallbacks__[data.uuid];
        if (cb && typeof cb == 'function') {
            cb(data.value)
        }
        self.__getCallbacks__[data.uuid] = undefined;
    });
};

User.prototype.handle = function(method, key, value, callback) {
    var self = this;
    var uuid = self.__uuid__++;
    process.send({
        isSharedMemoryMessage: true,
        method: method,
        id: cluster.worker.id,
        uuid: uuid,
        key: key,
        value: value
    });
    self.__getCallbacks__[uuid] = callback;
};

User.prototype.set = function(key, value, callback) {
    this.handle('set', key, value, callback);
};

User.prototype.get = function(key, callback) {
    this.handle('get', key, null, callback);
};

const id = cluster.worker.id;
const workers = Number(process.env.WORKERS || 4);
const user = new User();
const mine = { worker: id, list: [id, 'two', { three: 3 }], text: 'line\nbreak "quoted"' };
user.set('k' + id, mine, (ok) => {
  user.get('k' + id, (back) => {
    const own = ok === 'OK' && JSON.stringify(back) === JSON.stringify(mine);
    const seen = {};
    const poll = () => {
      let pending = 0;
      for (let w = 1; w <= workers; w++) {
        if (seen[w]) continue;
        pending++;
        user.get('k' + w, (v) => {
          if (v && v.worker === w) seen[w] = true;
          if (--pending === 0) {
            if (Object.keys(seen).length === workers) {
              user.get('missing', (m) => process.send({ result: id, own, all: true, missing: m === undefined }));
            } else {
              setTimeout(poll, 20);
            }
          }
        });
      }
    };
    poll();
  });
});
