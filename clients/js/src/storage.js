// Storage adapters for the outbox: async key/value stores of JSON values.
//   get(key) -> value | undefined,  set(key, value),  delete(key)

export class MemoryStorage {
    constructor() {
        this.map = new Map();
    }

    async get(key) {
        const v = this.map.get(key);
        return v === undefined ? undefined : JSON.parse(v);
    }

    async set(key, value) {
        this.map.set(key, JSON.stringify(value));
    }

    async delete(key) {
        this.map.delete(key);
    }
}

export class LocalStorageStorage {
    constructor(storage = globalThis.localStorage, prefix = '') {
        this.storage = storage;
        this.prefix = prefix;
    }

    async get(key) {
        const v = this.storage.getItem(this.prefix + key);
        return v === null ? undefined : JSON.parse(v);
    }

    async set(key, value) {
        this.storage.setItem(this.prefix + key, JSON.stringify(value));
    }

    async delete(key) {
        this.storage.removeItem(this.prefix + key);
    }
}

// One object store "kv" in the database `name` (default "collab-client").
export class IndexedDBStorage {
    constructor(name = 'collab-client', indexedDB = globalThis.indexedDB) {
        this.name = name;
        this.idb = indexedDB;
        this.db = null;
    }

    _open() {
        if (!this.db) {
            this.db = new Promise((resolve, reject) => {
                const req = this.idb.open(this.name, 1);
                req.onupgradeneeded = () => req.result.createObjectStore('kv');
                req.onsuccess = () => resolve(req.result);
                req.onerror = () => reject(req.error);
            });
        }
        return this.db;
    }

    async _tx(mode, fn) {
        const db = await this._open();
        return new Promise((resolve, reject) => {
            const tx = db.transaction('kv', mode);
            const req = fn(tx.objectStore('kv'));
            tx.oncomplete = () => resolve(req.result);
            tx.onerror = () => reject(tx.error);
            tx.onabort = () => reject(tx.error);
        });
    }

    async get(key) {
        const v = await this._tx('readonly', (s) => s.get(key));
        return v === undefined ? undefined : JSON.parse(v);
    }

    async set(key, value) {
        await this._tx('readwrite', (s) => s.put(JSON.stringify(value), key));
    }

    async delete(key) {
        await this._tx('readwrite', (s) => s.delete(key));
    }
}

// IndexedDB in a browser, else localStorage, else memory (Node: see FileStorage in ./node.js)
export function defaultStorage() {
    if (globalThis.indexedDB) {
        return new IndexedDBStorage();
    }
    try {
        if (globalThis.localStorage) {
            return new LocalStorageStorage();
        }
    } catch (e) {
        /* localStorage access can throw (disabled storage) */
    }
    return new MemoryStorage();
}
