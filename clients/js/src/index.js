// collab-client: the browser and Node client of ngx_http_collab_module (collab.v1).

export { CollabClient, UnauthorizedError } from './client.js';
export { Subscription } from './subscription.js';
export { MemoryStorage, LocalStorageStorage, IndexedDBStorage, defaultStorage } from './storage.js';
export { mergePatch } from './merge.js';
export { fullJitter, tokenExpiry } from './backoff.js';
