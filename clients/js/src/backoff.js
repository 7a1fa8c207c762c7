// Reconnect delays: exponential backoff with "full jitter" (a uniformly random delay between
// 0 and min(max, min * 2^attempt)), so that clients dropped together do not come back together.

export function fullJitter(attempt, min, max, random = Math.random) {
    const cap = Math.min(max, min * Math.pow(2, Math.min(attempt, 30)));
    return Math.floor(random() * cap);
}

// a token's exp claim in ms since the epoch, or null (not a JWT, no exp)
export function tokenExpiry(token) {
    if (typeof token !== 'string') {
        return null;
    }
    const part = token.split('.')[1];
    if (!part) {
        return null;
    }
    try {
        const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
        const text = typeof atob === 'function'
            ? atob(b64 + '==='.slice((b64.length + 3) % 4))
            : Buffer.from(b64, 'base64').toString('binary');
        const claims = JSON.parse(decodeURIComponent(escape(text)));
        return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
    } catch (e) {
        return null;
    }
}
