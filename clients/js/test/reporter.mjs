// A node:test reporter for t/111-js-client.t: one line per test,
//   check: 1 NAME                 or    check: 0 NAME -- ERROR
// (suites are left out: their tests are reported), and "log: ..." for diagnostics.

function oneLine(s) {
    return String(s).replace(/\s+/g, ' ').slice(0, 2000);
}

export default async function* reporter(source) {
    for await (const ev of source) {
        const d = ev.data || {};
        if ((ev.type === 'test:pass' || ev.type === 'test:fail')
            && !(d.details && d.details.type === 'suite')) {
            const file = d.file ? d.file.replace(/^.*\//, '') : '';
            const name = (file ? file + ': ' : '') + d.name;
            if (ev.type === 'test:pass') {
                yield `check: 1 ${name} (${Math.round(d.details.duration_ms)} ms)\n`;
            } else {
                const err = d.details && d.details.error;
                const cause = err && (err.cause || err);
                yield `check: 0 ${name} -- ${oneLine(cause && (cause.stack || cause.message) || cause)}\n`;
            }
        } else if (ev.type === 'test:diagnostic') {
            yield `log: ${oneLine(d.message)}\n`;
        } else if (ev.type === 'test:stderr' || ev.type === 'test:stdout') {
            yield `log: ${oneLine(d.message)}\n`;
        }
    }
}
