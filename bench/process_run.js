// bench/process_run.js N K: the Node.js peer of bench/process_run.lua,
// execFile("true") N times, K at a time; prints `RESULT runs_per_s=X`.
'use strict';
const { execFile } = require('child_process');
const N = Number(process.argv[2] || 1000);
const K = Number(process.argv[3] || 8);
let started = 0, done = 0;
const t0 = process.hrtime.bigint();
function next() {
  if (started >= N) return;
  started++;
  execFile('true', (err) => {
    if (err) throw err;
    if (++done === N) {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      console.log(`RESULT runs_per_s=${(N / s).toFixed(0)}`);
    } else next();
  });
}
for (let k = 0; k < K; k++) next();
