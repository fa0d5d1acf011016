// The server of the original's mocha suite (`test/server/index.js`), with one node replaced
// by a Rust process: `node suite-server.js <name> <port>` runs the Rust stand-in
// ($MESH_RUST_SERVER_BIN) when <name> is $MESH_RUST_SERVER, else the original server (copied
// next to this file as `original.js` by the test, with its Redis port changed).
'use strict';
const name = process.argv[2];
if (name === process.env.MESH_RUST_SERVER) {
  const { spawn } = require('child_process');
  const p = spawn(process.env.MESH_RUST_SERVER_BIN, process.argv.slice(2), { stdio: 'inherit' });
  for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => p.kill(s));
  p.on('exit', (code) => process.exit(code || 0));
} else {
  require('./original.js');
}
