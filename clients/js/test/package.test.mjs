// The package as its users get it: the exports map, the types, the script-tag build.

import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import vm from 'node:vm';
import { execFileSync } from 'node:child_process';

const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url)));

test('exports: "collab-client" and "collab-client/node" resolve, types exist', async () => {
    const main = await import('collab-client');
    const node = await import('collab-client/node');
    assert.equal(typeof main.CollabClient, 'function');
    assert.equal(typeof node.FileStorage, 'function');
    assert.equal(node.CollabClient, main.CollabClient);
    for (const f of [pkg.types, pkg.exports['.'].types, pkg.exports['./node'].types]) {
        assert.ok(fs.existsSync(new URL('../' + f, import.meta.url)), f);
    }
    assert.deepEqual(Object.keys(pkg.dependencies || {}), [], 'no runtime dependencies');
    assert.equal(pkg.type, 'module');
});

test('the script-tag build defines window.Collab in a browser-like global', () => {
    const out = new URL('../dist/test-build.js', import.meta.url);
    execFileSync(process.execPath, [new URL('../scripts/build.mjs', import.meta.url).pathname,
                                    '--out', out.pathname]);
    const window = { crypto: globalThis.crypto };
    window.window = window;
    vm.runInNewContext(fs.readFileSync(out, 'utf8'), { window, globalThis: window });
    assert.equal(typeof window.Collab.CollabClient, 'function');
    assert.equal(window.CollabClient, window.Collab.CollabClient);
    const merged = window.Collab.mergePatch({ a: 1, b: { c: 2 } }, { b: { c: null }, d: 3 });
    assert.equal(JSON.stringify(merged), '{"a":1,"b":{},"d":3}');
});

test('npm pack ships src, dist, the types and the README only', () => {
    const files = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'],
                                          { cwd: new URL('..', import.meta.url).pathname,
                                            stdio: ['ignore', 'pipe', 'ignore'] }))[0].files
        .map((f) => f.path);
    assert.ok(files.includes('src/index.js') && files.includes('index.d.ts')
              && files.includes('README.md')
              && files.includes('node.d.ts') && files.includes('package.json'), files.join(' '));
    assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('node_modules/')));
});
