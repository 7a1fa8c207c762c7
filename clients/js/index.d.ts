// Types of collab-client (hand-written; the package has no build step for its ES modules).

export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'failed';
export type TransportKind = 'websocket' | 'sse';
export type Role = 'none' | 'viewer' | 'commenter' | 'editor' | 'owner';
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Async key/value store of JSON values (the outbox and the client instance id). */
export interface Storage {
    get(key: string): Promise<any>;
    set(key: string, value: any): Promise<void>;
    delete(key: string): Promise<void>;
}

export class MemoryStorage implements Storage {
    get(key: string): Promise<any>;
    set(key: string, value: any): Promise<void>;
    delete(key: string): Promise<void>;
}
export class LocalStorageStorage implements Storage {
    constructor(storage?: { getItem(k: string): string | null; setItem(k: string, v: string): void;
                            removeItem(k: string): void }, prefix?: string);
    get(key: string): Promise<any>;
    set(key: string, value: any): Promise<void>;
    delete(key: string): Promise<void>;
}
export class IndexedDBStorage implements Storage {
    constructor(name?: string, indexedDB?: IDBFactory);
    get(key: string): Promise<any>;
    set(key: string, value: any): Promise<void>;
    delete(key: string): Promise<void>;
}
/** IndexedDB, else localStorage, else memory. */
export function defaultStorage(): Storage;

/** RFC 7396 JSON Merge Patch, as `collab_merge json-merge` applies it. */
export function mergePatch(target: Json | undefined, patch: Json): Json;
/** A random delay in [0, min(max, min * 2^attempt)). */
export function fullJitter(attempt: number, min: number, max: number, random?: () => number): number;
/** The `exp` claim of a JWT in ms, or null. */
export function tokenExpiry(token: string): number | null;

/** Thrown by getToken() to stop reconnecting: the client goes to state `failed`. */
export class UnauthorizedError extends Error {
    code: 'unauthorized';
    constructor(message?: string);
}

/** A delta waiting for its ack (persisted in the storage until then). */
export interface OutboxEntry {
    id: string;
    doc: string;
    data: Json;
    base?: number;
    /** set once the delta was seen in the document's stream (it is in `confirmed`) */
    seq?: number;
}

export type RebaseContext =
    | { type: 'remote'; delta: DeltaMessage }
    | { type: 'conflict'; head: number; nack: NackMessage };

export interface SubscribeOptions {
    /** resume from this seq of this epoch instead of starting from the snapshot */
    since?: number;
    epoch?: string;
    /** optimistic state: the state is `apply(confirmed, data)` over every delta */
    apply?: (state: any, data: any) => any;
    /** shorthand for apply: mergePatch (collab_merge json-merge) */
    merge?: boolean;
    /**
     * Called for every pending local delta when a remote delta comes before it, and when
     * the server refuses it with `nack` `conflict` (collab_conflict reject-stale).
     * Return new data, undefined to keep it, or null to drop the delta.
     */
    rebase?: (entry: OutboxEntry, ctx: RebaseContext) => Json | undefined | null;
    /** send `base` (the seq the delta was made on) with every delta (reject-stale) */
    sendBase?: boolean;
    /** the state to start from (with since) */
    state?: any;
}

export interface ClientOptions {
    /** the collab location: http(s):// or ws(s)://, or a path in a browser (default /collab) */
    url?: string;
    /** added to every URL (e.g. { user: 'alice' } for collab_user $arg_user) */
    params?: Record<string, string | number | null | undefined>;
    /** a WebSocket class (Node 20: the "ws" package); default globalThis.WebSocket */
    WebSocket?: any;
    /** default globalThis.fetch (SSE + POST) */
    fetch?: typeof fetch;
    /** called on every connect and before the token expires; throw UnauthorizedError to stop */
    getToken?: () => string | Promise<string>;
    /** a fixed token (no refresh) */
    token?: string;
    /** default ['websocket', 'sse'] */
    transports?: TransportKind[];
    /** backoff bounds in ms (full jitter); default 500 and 15000 */
    minBackoff?: number;
    maxBackoff?: number;
    /** ms until a connection must be up (default 10000) */
    connectTimeout?: number;
    /** ms of silence after which a connection is dropped (default 2 heartbeats + 5 s) */
    livenessTimeout?: number;
    /** consecutive WebSocket failures before the handshake that switch to SSE (default 2) */
    fallbackAfter?: number;
    /** ms on SSE before a WebSocket is tried again (default 60000) */
    websocketRetry?: number;
    /** ms before a token's exp to ask getToken() for a new one (default 30000) */
    tokenRefreshMargin?: number;
    /** the outbox store (default defaultStorage()) and its key */
    storage?: Storage;
    storageKey?: string;
    /** most unacked deltas (default 1000): send() rejects beyond */
    maxOutbox?: number;
    /** the `client` instance id (default: random, kept in the storage) */
    clientId?: string;
    random?: () => number;
}

export interface StateEvent {
    old: ConnectionState;
    new: ConnectionState;
    reason: string;
    /** ms until the next attempt (state disconnected), else null */
    retryIn: number | null;
    transport: TransportKind | null;
}

export interface SubscribedEvent {
    doc: string;
    /** true: continued from the log, nothing missed */
    recovered: boolean;
    /** 'initial', or why not recovered: 'epoch' | 'trimmed' | 'ahead' | 'lagging'; or the
     *  resync that preceded a recovery ('lagging', 'gap'); null after a plain reconnect */
    reason: 'initial' | 'epoch' | 'trimmed' | 'ahead' | 'lagging' | 'gap' | null;
    role: Role;
    epoch: string;
    head: number;
    seq: number;
    snapshot: { seq: number; data: Json } | null;
}

export interface DeltaMessage {
    type: 'delta';
    doc: string;
    seq: number;
    id: string;
    user: string;
    ts: number;
    data: Json;
    /** sent by this client */
    own?: boolean;
}

export interface NackMessage {
    type: 'nack';
    id?: string;
    doc?: string;
    code: string;
    message: string;
    seq?: number;
    retry_after_ms?: number;
}

export interface PresenceEvent {
    type: 'join' | 'update' | 'leave';
    doc: string;
    session: string;
    user: string;
    data?: Json;
    /** leave: 'unsubscribed' | 'closed' | 'revoked' | 'dropped' | 'expired' | 'gone' */
    reason?: string;
}

export interface RoleEvent { doc: string; role: Role; old: Role | null; }

export interface ChangeEvent {
    doc: string;
    state: any;
    seq: number | null;
    source: 'snapshot' | 'local' | 'own' | 'remote' | 'acked' | 'rejected';
}

export interface SendResult { doc: string; id: string; seq: number; }
export interface SendError { code: string; message: string; id?: string; doc?: string; seq?: number; }

type Off = () => void;

export class Subscription {
    readonly doc: string;
    readonly seq: number | null;
    readonly epoch: string | null;
    readonly role: Role | null;
    readonly head: number;
    readonly subscribed: boolean;
    readonly active: boolean;
    /** editor or owner */
    readonly canEdit: boolean;
    /** the server's state up to seq (with apply/merge) */
    readonly confirmed: any;
    /** confirmed + the pending local deltas */
    readonly state: any;
    /** other sessions' presence, by session id */
    readonly members: Map<string, { session: string; user: string; data: Json }>;
    send(data: Json, opts?: { id?: string; base?: number }): Promise<SendResult>;
    setPresence(data: Json): void;
    sendIntent(data: Json): boolean;
    onPresence(fn: (ev: PresenceEvent) => void): Off;
    unsubscribe(): void;

    on(event: 'subscribed', fn: (ev: SubscribedEvent) => void): Off;
    on(event: 'snapshot', fn: (ev: { doc: string; seq: number; data: Json; epoch: string }) => void): Off;
    on(event: 'delta', fn: (m: DeltaMessage) => void): Off;
    on(event: 'change', fn: (ev: ChangeEvent) => void): Off;
    on(event: 'presence', fn: (ev: PresenceEvent) => void): Off;
    on(event: 'intent', fn: (m: { doc: string; user: string; session: string; data: Json }) => void): Off;
    on(event: 'role', fn: (ev: RoleEvent) => void): Off;
    on(event: 'resync', fn: (m: { doc: string; seq: number; reason: string }) => void): Off;
    on(event: 'unsubscribed', fn: (m: { doc: string; reason: string }) => void): Off;
    on(event: 'nack', fn: (m: NackMessage) => void): Off;
    on(event: 'error', fn: (m: { doc?: string; code: string; message: string }) => void): Off;
    on(event: string, fn: (arg: any) => void): Off;
    once(event: string, fn: (arg: any) => void): Off;
    off(event: string, fn: (arg: any) => void): this;
}

export class CollabClient {
    constructor(opts?: ClientOptions);
    readonly state: ConnectionState;
    readonly transport: TransportKind | null;
    readonly user: string | null;
    readonly session: string | null;
    readonly heartbeat: number | null;
    readonly clientId: string | null;
    readonly outbox: OutboxEntry[];
    readonly subs: Map<string, Subscription>;
    /** resolves once the outbox and the client id are loaded from the storage */
    readonly ready: Promise<void>;

    connect(): this;
    close(): void;
    subscribe(doc: string, opts?: SubscribeOptions): Subscription;
    unsubscribe(doc: string): void;
    /** queue a delta: persisted, sent, resent with the same id until acked */
    send(doc: string, data: Json, opts?: { id?: string; base?: number }): Promise<SendResult>;
    newId(): string;
    setPresence(doc: string, data: Json): void;
    onPresence(doc: string, fn: (ev: PresenceEvent) => void): Off;
    sendIntent(doc: string, data: Json): boolean;

    on(event: 'state', fn: (ev: StateEvent) => void): Off;
    on(event: 'welcome', fn: (m: { session: string; user: string; heartbeat: number }) => void): Off;
    on(event: 'subscribed', fn: (ev: SubscribedEvent) => void): Off;
    on(event: 'disconnect', fn: (ev: { code: number; reason: string; transport: TransportKind }) => void): Off;
    on(event: 'token', fn: (ev: { refreshed: boolean }) => void): Off;
    on(event: 'outbox', fn: (ev: { size: number; restored?: boolean }) => void): Off;
    on(event: 'ack', fn: (m: { type: 'ack'; id: string; doc: string; seq: number }) => void): Off;
    on(event: 'nack', fn: (m: NackMessage) => void): Off;
    on(event: 'presence', fn: (ev: PresenceEvent) => void): Off;
    on(event: 'role', fn: (ev: RoleEvent) => void): Off;
    on(event: 'intent', fn: (m: any) => void): Off;
    on(event: 'unsubscribed', fn: (m: { doc: string; reason: string }) => void): Off;
    on(event: 'error', fn: (m: { doc?: string; code: string; message: string }) => void): Off;
    on(event: 'message', fn: (m: any) => void): Off;
    on(event: string, fn: (arg: any) => void): Off;
    once(event: string, fn: (arg: any) => void): Off;
    off(event: string, fn: (arg: any) => void): this;
}
