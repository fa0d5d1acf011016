// One Node mesh-link 0.13.6 node for `mesh-bench node-compare`.
//
//   node harness.js server <redisPort> <prefix> <port>
//   node harness.js client <redisPort> <prefix> <port> <serverPort> <scenario> <seconds>
//
// The server answers handler 1 (echo), counts handler 2 (one-way) and handler 3 (bulk), and
// prints its counts as JSON when it gets SIGTERM. The client runs one scenario against the
// server and prints one JSON line: { scenario, ops, seconds, latencies_us? }.
'use strict';
const mlink = require('mesh-link');

const [role, redisPort, prefix, port, serverPort, scenario, seconds] = process.argv.slice(2);

const conf = {
  redis: { host: '127.0.0.1', port: Number(redisPort) },
  prefix,
  address: '127.0.0.1',
  nic: 'none',
  strict: false,
  port: Number(port),
};

const counts = { oneway: 0, bulkBytes: 0 };

mlink.handler(1, function (data, cb) { cb(data); });
mlink.handler(2, function () { counts.oneway += 1; });
mlink.handler(3, function (data, cb) {
  counts.bulkBytes += (data && data.length) || 0;
  cb({ ok: true });
});

function now() { return Number(process.hrtime.bigint()) / 1e3; }

async function client() {
  const server = { address: '127.0.0.1', port: Number(serverPort) };
  // Wait until discovery knows the server (the original only sends to known nodes).
  for (let i = 0; i < 200 && !mlink.nodeExists(server.address, server.port); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const end = now() + Number(seconds) * 1e6;
  const started = now();
  const out = { scenario, ops: 0, seconds: 0, latencies_us: [] };
  if (scenario === 'rtt') {
    const payload = { b: 'x'.repeat(50) };
    while (now() < end) {
      const t = now();
      await new Promise((resolve) => mlink.send(1, [server], payload, () => resolve()));
      out.latencies_us.push(now() - t);
      out.ops += 1;
    }
  } else if (scenario === 'oneway') {
    const payload = { b: 'x'.repeat(50) };
    while (now() < end) {
      for (let i = 0; i < 100; i++) { mlink.send(2, [server], payload); out.ops += 1; }
      await new Promise((r) => setImmediate(r));
    }
  } else if (scenario === 'bulk') {
    const payload = Buffer.alloc(1 << 20, 5);
    while (now() < end) {
      await new Promise((resolve) => mlink.send(3, [server], payload, () => resolve()));
      out.ops += 1;
    }
  }
  out.seconds = (now() - started) / 1e6;
  // Exit only once the line is written: a pipe is written asynchronously.
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
}

mlink.start(conf).then(() => {
  if (role === 'server') {
    process.stdout.write(JSON.stringify({ ready: true, port: mlink.info().port }) + '\n');
    process.on('SIGTERM', () => {
      process.stdout.write(JSON.stringify(counts) + '\n', () => process.exit(0));
    });
  } else {
    client().catch((e) => { process.stderr.write(String(e) + '\n'); process.exit(1); });
  }
}).catch((e) => { process.stderr.write(String(e) + '\n'); process.exit(1); });
