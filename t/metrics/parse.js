// Reads the Prometheus text exposition format on stdin, writes the parsed
// families as JSON (parse-prometheus-text-format); exits 1 when it throws.
'use strict';
const parse = require('parse-prometheus-text-format');
let text = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => { text += d; });
process.stdin.on('end', () => {
    try {
        process.stdout.write(JSON.stringify(parse(text)));
    } catch (e) {
        process.stderr.write(String(e) + '\n');
        process.exit(1);
    }
});
