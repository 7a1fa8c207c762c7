// Builds dist/collab.js, the script-tag build: the ES modules of src/ (without node.js)
// concatenated in dependency order inside one function, their exports on `window.Collab`
// (and `module.exports` under CommonJS). Plain Node, no bundler:
//     node scripts/build.mjs [--out FILE]...
// Every module may import only from the others with `import { a, b } from './x.js';`.

import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const order = [];
const seen = new Set();
const exported = [];

function visit(file) {
    if (seen.has(file)) {
        return;
    }
    seen.add(file);
    const text = readFileSync(join(root, 'src', file), 'utf8');
    for (const m of text.matchAll(/^(?:import|export)\s*\{[^}]*\}\s*from\s*'\.\/([\w-]+\.js)';$/gm)) {
        visit(m[1]);
    }
    order.push(file);
}

visit('index.js');
const parts = [];
for (const file of order) {
    let text = readFileSync(join(root, 'src', file), 'utf8');
    if (file === 'index.js') {
        for (const m of text.matchAll(/^export\s*\{([^}]*)\}/gm)) {
            exported.push(...m[1].split(',').map((s) => s.trim()).filter(Boolean));
        }
        continue;
    }
    if (/^\s*import\s+(?!\{)/m.test(text) || /^export\s+(default|\*)/m.test(text)) {
        throw new Error(`${file}: only "import { ... } from './x.js'" and named exports`);
    }
    text = text.replace(/^import\s*\{[^}]*\}\s*from\s*'[^']*';\n/gm, '')
        .replace(/^export\s+(class|function|const|let|async function)\s/gm, '$1 ');
    parts.push(`// ---- src/${file}\n${text.trim()}\n`);
}

const out = `/*! ${pkg.name} ${pkg.version} | script-tag build of clients/js (do not edit: \
node clients/js/scripts/build.mjs) */
(function (root) {
'use strict';

${parts.join('\n')}
const Collab = { ${exported.join(', ')} };
root.Collab = Collab;
root.CollabClient = CollabClient;
if (typeof module === 'object' && module && module.exports) {
    module.exports = Collab;
}
}(typeof globalThis !== 'undefined' ? globalThis : window));
`;

const targets = [];
for (let i = 2; i < process.argv.length; i++) {
    if (process.argv[i] === '--out') {
        targets.push(process.argv[++i]);
    }
}
if (!targets.length) {
    targets.push(join(root, 'dist', 'collab.js'));
}
for (const t of targets) {
    mkdirSync(dirname(t), { recursive: true });
    writeFileSync(t, out);
    if (t.startsWith(join(root, 'dist'))) {
        // the package is "type": "module"; this file is a classic script
        writeFileSync(join(dirname(t), 'package.json'), '{ "type": "commonjs" }\n');
    }
    console.log(`wrote ${t} (${out.length} bytes)`);
}
