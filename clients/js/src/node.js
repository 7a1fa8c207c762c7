// Node additions: a storage adapter that keeps the outbox in a JSON file, so that unacked
// deltas survive a restart of the process. Import from "collab-client/node".

import { readFile, writeFile, rename, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';

export * from './index.js';

export class FileStorage {
    constructor(path) {
        this.path = path;
        this.data = null;
        this.chain = Promise.resolve();
    }

    async _read() {
        if (this.data === null) {
            try {
                this.data = JSON.parse(await readFile(this.path, 'utf8'));
            } catch (e) {
                if (e.code !== 'ENOENT') {
                    throw e;
                }
                this.data = {};
            }
        }
        return this.data;
    }

    // every write replaces the file atomically (write a temp file, rename it)
    _write() {
        const text = JSON.stringify(this.data);
        this.chain = this.chain.then(async () => {
            await mkdir(dirname(this.path), { recursive: true });
            await writeFile(this.path + '.tmp', text);
            await rename(this.path + '.tmp', this.path);
        });
        return this.chain;
    }

    async get(key) {
        const d = await this._read();
        return d[key];
    }

    async set(key, value) {
        const d = await this._read();
        d[key] = JSON.parse(JSON.stringify(value));
        await this._write();
    }

    async delete(key) {
        const d = await this._read();
        delete d[key];
        await this._write();
    }
}
