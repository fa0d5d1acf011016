// One Node mesh-link 0.13.6 node of a mixed mesh test, driven over stdin and stdout.
//
//   node peer.js <redisPort> <prefix> <port> <name>
//
// Type `nodejs`, value `name`. Handlers: 1 answers with what it got; 2 counts one-way
// messages (and their JSON bytes); 3 counts usends. Commands, one JSON object per line on
// stdin, each answered by one JSON line on stdout (the same protocol as the Rust
// `compat-peer` binary):
//   {"op":"nodes"}                                   -> {"nodes":[{address,port,type,name}]}
//   {"op":"request","to":{address,port},"handler":1,"data":X} -> {"ok":true,"answer":Y} | {"ok":false,"error":E}
//   {"op":"send","to":...,"handler":2,"data":X}      -> {"ok":true} (handed over; no outcome in the original)
//   {"op":"usend","to":...,"handler":3,"data":X}     -> {"ok":true}
//   {"op":"counts"}                                  -> {"oneway":n,"oneway_bytes":b,"usend":u}
//   {"op":"stop"}                                    -> {"stopped":true}, then exit
'use strict';
const mlink = require('mesh-link');
const readline = require('readline');

const [redisPort, prefix, port, name] = process.argv.slice(2);

const counts = { oneway: 0, oneway_bytes: 0, usend: 0 };

mlink.handler(1, function (data, cb) { cb(data); });
mlink.handler(2, function (data) {
  counts.oneway += 1;
  counts.oneway_bytes += JSON.stringify(data).length;
});
mlink.handler(3, function () { counts.usend += 1; });
mlink.setType('nodejs');
mlink.setValue('name', name);

function out(v) { process.stdout.write(JSON.stringify(v) + '\n'); }

function nodes() {
  const all = mlink.getNodes();
  return Object.keys(all).map((k) => ({
    address: all[k].node.address,
    port: all[k].node.port,
    type: all[k].type,
    name: all[k].data.name,
  }));
}

function command(line) {
  let c;
  try { c = JSON.parse(line); } catch (e) { return out({ error: 'bad command' }); }
  if (c.op === 'nodes') return out({ nodes: nodes() });
  if (c.op === 'counts') return out(counts);
  if (c.op === 'request') {
    let answered = false;
    return mlink.send(c.handler, [c.to], c.data, (error, answer) => {
      if (answered) return; // the original may call back twice (see its reference, 3.6.5)
      answered = true;
      if (error) return out({ ok: false, error: error.message });
      out({ ok: true, answer });
    });
  }
  if (c.op === 'send') { mlink.send(c.handler, [c.to], c.data); return out({ ok: true }); }
  if (c.op === 'usend') { mlink.usend(c.handler, [c.to], c.data); return out({ ok: true }); }
  if (c.op === 'stop') {
    return mlink.stop(() => process.stdout.write(JSON.stringify({ stopped: true }) + '\n', () => process.exit(0)));
  }
  out({ error: 'unknown op ' + c.op });
}

const conf = {
  redis: { host: '127.0.0.1', port: Number(redisPort) },
  prefix,
  address: '127.0.0.1',
  nic: 'none',
  strict: false,
  port: Number(port),
  relayLimit: 10,
};

mlink.start(conf).then(() => {
  out({ ready: true, port: mlink.info().port });
  readline.createInterface({ input: process.stdin }).on('line', command);
}).catch((e) => { process.stderr.write(String(e) + '\n'); process.exit(1); });
