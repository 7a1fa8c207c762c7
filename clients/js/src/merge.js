// RFC 7396 JSON Merge Patch, as the server applies it with `collab_merge json-merge`:
// the default `apply` of a subscription, so that the optimistic local state matches what the
// server will compute. Returns a new value; the inputs are not modified.

export function mergePatch(target, patch) {
    if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) {
        return patch;
    }
    const out = target !== null && typeof target === 'object' && !Array.isArray(target)
        ? { ...target } : {};
    for (const k of Object.keys(patch)) {
        if (patch[k] === null) {
            delete out[k];
        } else {
            out[k] = mergePatch(out[k], patch[k]);
        }
    }
    return out;
}
