export * from './index.js';
import { Storage } from './index.js';

/** The outbox in a JSON file, replaced atomically on every write (Node only). */
export class FileStorage implements Storage {
    constructor(path: string);
    get(key: string): Promise<any>;
    set(key: string, value: any): Promise<void>;
    delete(key: string): Promise<void>;
}
