
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"

#include <openssl/hmac.h>
#include <openssl/rand.h>


/*
 * Rate and connection limits.
 *
 * A session has two token buckets of its own (messages and bytes, in the
 * manner of limit_req: "excess" drains at the rate and may not pass the
 * burst).  Users and documents are counted across the workers of an
 * instance in a shared table: a slot per key, found by a short linear
 * probe from the key's hash; when the probe finds no room, keys share a
 * slot, which can only make a limit stricter, never looser.
 *
 * Users and documents are named by clients, so the hash is keyed (HMAC with
 * a random key of the zone) and a slot matches only on the whole name: no
 * one can choose a name that lands in another's slot.  A name longer than
 * the slot holds is stored as its keyed digest.
 */


#define NGX_HTTP_COLLAB_LIMIT_PROBE    8
#define NGX_HTTP_COLLAB_LIMIT_IDLE     60000
#define NGX_HTTP_COLLAB_STRIKE_WINDOW  10000
#define NGX_HTTP_COLLAB_LIMIT_NAME     64
#define NGX_HTTP_COLLAB_LIMIT_SECRET   32


/*
 * kind: 'u' user, 'd' document, 'p' POST user, 'a' POST address; upper
 * case: name is the keyed digest
 */

typedef struct {
    uint32_t                     hash;
    u_char                       kind;
    u_char                       len;
    u_char                       name[NGX_HTTP_COLLAB_LIMIT_NAME];
} ngx_http_collab_limit_key_t;


typedef struct {
    uint32_t                     sessions;
    ngx_msec_t                   last;           /* the bucket's clock */
    ngx_msec_t                   seen;           /* for reuse of the slot */
    uint64_t                     excess;
    ngx_http_collab_limit_key_t  key;            /* kind 0: free */
} ngx_http_collab_limit_slot_t;


typedef struct {
    ngx_uint_t                   nslots;
    u_char                       secret[NGX_HTTP_COLLAB_LIMIT_SECRET];
    ngx_http_collab_limit_slot_t slots[1];
} ngx_http_collab_limit_sh_t;


static ngx_int_t ngx_http_collab_limit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_collab_limit_slot(ngx_http_collab_limit_sh_t *sh,
    ngx_http_collab_limit_key_t *key, ngx_uint_t create);
static void ngx_http_collab_limit_key(ngx_http_collab_limit_sh_t *sh,
    u_char kind, ngx_str_t *name, ngx_http_collab_limit_key_t *key);
static ngx_int_t ngx_http_collab_limit_bucket(uint64_t *excess,
    ngx_msec_t *last, ngx_uint_t rate, ngx_uint_t burst, uint64_t cost,
    ngx_msec_t *retry);


/* collab_limit_zone SIZE */

char *
ngx_http_collab_limit_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_main_conf_t *mcf = conf;

    ssize_t     size;
    ngx_str_t  *value;

    if (mcf->limit_zone) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_size(&value[1]);

    if (size == NGX_ERROR || size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\", at least %uz bytes",
                           &value[1], 8 * ngx_pagesize);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_collab_limit_zone_add(cf, mcf, size) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* also without collab_limit_zone: the POST limits need the table */

ngx_int_t
ngx_http_collab_limit_zone_add(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, size_t size)
{
    ngx_str_t  name;

    ngx_str_set(&name, "collab_limits");

    mcf->limit_zone = ngx_shared_memory_add(cf, &name, size,
                                            &ngx_http_collab_module);
    if (mcf->limit_zone == NULL) {
        return NGX_ERROR;
    }

    mcf->limit_zone->init = ngx_http_collab_limit_init_zone;
    mcf->limit_zone->data = mcf;

    return NGX_OK;
}


static ngx_int_t
ngx_http_collab_limit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    size_t                        n;
    ngx_slab_pool_t              *shpool;
    ngx_http_collab_limit_sh_t   *sh;
    ngx_http_collab_main_conf_t  *mcf;

    mcf = shm_zone->data;

    if (data) {
        /* a reload keeps the counts of the sessions that live on */
        mcf->limit_sh = ((ngx_http_collab_main_conf_t *) data)->limit_sh;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        mcf->limit_sh = shpool->data;
        return NGX_OK;
    }

    /* the slab allocator keeps a descriptor per page: leave it room */
    n = (shm_zone->shm.size - shm_zone->shm.size / 32 - 4 * ngx_pagesize)
        / sizeof(ngx_http_collab_limit_slot_t);

    sh = ngx_slab_alloc(shpool, sizeof(ngx_http_collab_limit_sh_t)
                                + n * sizeof(ngx_http_collab_limit_slot_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(sh->slots, n * sizeof(ngx_http_collab_limit_slot_t));
    sh->nslots = n;

    /* kept with the zone: a reload that reuses the zone keeps the slots */

    if (RAND_bytes(sh->secret, NGX_HTTP_COLLAB_LIMIT_SECRET) != 1) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "collab: no random key for the limit zone");
        return NGX_ERROR;
    }

    shpool->data = sh;
    mcf->limit_sh = sh;

    return NGX_OK;
}


static void
ngx_http_collab_limit_key(ngx_http_collab_limit_sh_t *sh, u_char kind,
    ngx_str_t *name, ngx_http_collab_limit_key_t *key)
{
    u_char        md[EVP_MAX_MD_SIZE];
    unsigned int  mdlen;

    ngx_memzero(md, sizeof(md));

    /* the kind is compared in the slot: the hash is of the name alone */

    if (HMAC(EVP_sha256(), sh->secret, NGX_HTTP_COLLAB_LIMIT_SECRET,
             name->len ? name->data : (u_char *) "", name->len, md, &mdlen)
        == NULL)
    {
        /* still exact: a slot matches on the whole name */
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "collab: HMAC of a limit key failed");
    }

    ngx_memcpy(&key->hash, md, sizeof(uint32_t));

    if (name->len <= NGX_HTTP_COLLAB_LIMIT_NAME) {
        key->kind = kind;
        key->len = (u_char) name->len;
        ngx_memcpy(key->name, name->data, name->len);

    } else {
        /* a 256-bit keyed digest stands for the name */
        key->kind = ngx_toupper(kind);
        key->len = 32;
        ngx_memcpy(key->name, md, 32);
    }
}


/*
 * The index of the key's slot, called with the zone locked; -1 when it has
 * none and create is off.
 */

static ngx_int_t
ngx_http_collab_limit_slot(ngx_http_collab_limit_sh_t *sh,
    ngx_http_collab_limit_key_t *key, ngx_uint_t create)
{
    ngx_uint_t                     i, start, n, free;
    ngx_http_collab_limit_slot_t  *slot;

    start = key->hash % sh->nslots;
    free = sh->nslots;

    for (i = 0; i < NGX_HTTP_COLLAB_LIMIT_PROBE; i++) {
        n = (start + i) % sh->nslots;
        slot = &sh->slots[n];

        if (slot->key.kind == key->kind
            && slot->key.len == key->len
            && slot->key.hash == key->hash
            && ngx_memcmp(slot->key.name, key->name, key->len) == 0)
        {
            return n;
        }

        if (free == sh->nslots
            && (slot->key.kind == 0
                || (slot->sessions == 0
                    && ngx_current_msec - slot->seen
                       > NGX_HTTP_COLLAB_LIMIT_IDLE)))
        {
            free = n;
        }
    }

    if (!create) {
        return -1;
    }

    if (free == sh->nslots) {
        /* shared with another key: stricter for both */
        return start;
    }

    slot = &sh->slots[free];

    slot->key = *key;
    slot->sessions = 0;
    slot->excess = 0;
    slot->last = ngx_current_msec;
    slot->seen = ngx_current_msec;

    return free;
}


/*
 * rate: per 1000 s (a request costs 1000 in "excess"), so that fractional
 * rates such as 30r/m work.  NGX_BUSY with the time until it would pass.
 */

static ngx_int_t
ngx_http_collab_limit_bucket(uint64_t *excess, ngx_msec_t *last,
    ngx_uint_t rate, ngx_uint_t burst, uint64_t cost, ngx_msec_t *retry)
{
    uint64_t    e, drained, limit;
    ngx_msec_t  now, elapsed;

    now = ngx_current_msec;

    /* the workers' clocks differ a little: one may be behind the bucket */
    elapsed = ((ngx_msec_int_t) (now - *last) > 0) ? now - *last : 0;

    drained = (uint64_t) rate * elapsed / 1000;
    e = (*excess > drained) ? *excess - drained : 0;

    if (elapsed) {
        *last = now;
    }

    *excess = e;

    limit = (uint64_t) burst * 1000;

    if (e + cost > limit + 1000) {
        *retry = (ngx_msec_t) ((e + cost - limit - 1000) * 1000 / rate + 1);
        return NGX_BUSY;
    }

    *excess = e + cost;

    return NGX_OK;
}


/*
 * A message of len bytes that costs as much as "cost" deltas (never more
 * than the bucket holds, so that it can pass when the bucket is full).
 * NGX_BUSY: over a limit, *retry in ms; NGX_DONE: the session was closed
 * for flooding.
 */

ngx_int_t
ngx_http_collab_limit_message(ngx_http_collab_session_t *s, ngx_uint_t cost,
    size_t len, ngx_msec_t *retry)
{
    ngx_int_t                      rc;
    ngx_uint_t                     units, limit;
    ngx_msec_t                     t;
    ngx_slab_pool_t               *shpool;
    ngx_http_collab_limit_sh_t    *sh;
    ngx_http_collab_limit_key_t    key;
    ngx_http_collab_limit_slot_t  *slot;
    ngx_http_collab_loc_conf_t    *lcf;
    ngx_http_collab_main_conf_t   *mcf;

    lcf = s->conf;
    rc = NGX_OK;
    *retry = 0;
    units = ngx_min(cost, lcf->burst + 1) * 1000;

    /* for a POST, the buckets of its request */

    limit = NGX_HTTP_COLLAB_LIMIT_MESSAGES;

    if (lcf->rate) {
        rc = ngx_http_collab_limit_bucket(&s->limit_excess, &s->limit_last,
                                          lcf->rate, lcf->burst, units,
                                          retry);
    }

    if (rc == NGX_OK && lcf->rate_bytes && len) {
        /* bytes: "excess" counts bytes * 1000 as well */
        limit = NGX_HTTP_COLLAB_LIMIT_BYTES;
        rc = ngx_http_collab_limit_bucket(&s->limit_bytes_excess,
                                          &s->limit_bytes_last,
                                          lcf->rate_bytes * 1000,
                                          lcf->rate_bytes_burst,
                                          (uint64_t) len * 1000, retry);
    }

    mcf = ngx_http_collab_worker->mcf;

    if (rc == NGX_OK && lcf->user_rate && mcf->limit_sh) {
        limit = NGX_HTTP_COLLAB_LIMIT_USER;
        shpool = (ngx_slab_pool_t *) mcf->limit_zone->shm.addr;

        ngx_http_collab_limit_key(mcf->limit_sh, 'u', &s->user, &key);

        ngx_shmtx_lock(&shpool->mutex);

        sh = mcf->limit_sh;
        slot = &sh->slots[ngx_http_collab_limit_slot(sh, &key, 1)];

        slot->seen = ngx_current_msec;

        rc = ngx_http_collab_limit_bucket(&slot->excess, &slot->last,
                                          lcf->user_rate, lcf->user_burst,
                                          ngx_min(cost, lcf->user_burst + 1)
                                          * 1000, &t);

        ngx_shmtx_unlock(&shpool->mutex);

        if (rc == NGX_BUSY) {
            *retry = t;
        }
    }

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_RATE_LIMITED + limit);

    /* a client that keeps going after the nacks is cut off */

    if (ngx_current_msec - s->strike_start > NGX_HTTP_COLLAB_STRIKE_WINDOW) {
        s->strike_start = ngx_current_msec;
        s->strikes = 0;
    }

    if (++s->strikes > ngx_max(100, 2 * lcf->burst)
        && s->transport != NGX_HTTP_COLLAB_TRANSPORT_POST)
    {
        ngx_log_error(NGX_LOG_WARN, s->connection->log, 0,
                      "collab: \"%V\" keeps flooding, closing the session",
                      ngx_http_collab_esc(&s->user));

        s->shutdown = 1;
        ngx_http_collab_session_close(s, 4429, "rate limited");
        return NGX_DONE;
    }

    if (s->strikes == 1) {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "collab: \"%V\" is over the rate limit",
                      ngx_http_collab_esc(&s->user));
    }

    return NGX_BUSY;
}


/*
 * An ephemeral message (Yjs awareness) in a bucket of its own, at the rate
 * and burst of collab_rate: over it the message is dropped, the next one
 * supersedes it; never a strike, never the budget of the updates.
 */

ngx_int_t
ngx_http_collab_limit_ephemeral(ngx_http_collab_session_t *s,
    uint64_t *excess, ngx_msec_t *last)
{
    ngx_msec_t  retry;

    if (s->conf->rate == 0) {
        return NGX_OK;
    }

    return ngx_http_collab_limit_bucket(excess, last, s->conf->rate,
                                        s->conf->burst, 1000, &retry);
}


/*
 * POST: one bucket per user, or per client address (an IPv6 /64) when the
 * request has no identity of its own, shared by every request of the
 * instance, at the rate and burst of collab_rate.  Every message of a body
 * costs one.  NGX_BUSY: over it, *retry in ms.  A peek only tells whether
 * the next message would pass.
 */

ngx_int_t
ngx_http_collab_limit_post(ngx_http_collab_session_t *s, ngx_uint_t peek,
    ngx_msec_t *retry)
{
    ngx_int_t                      rc;
    ngx_str_t                      name;
    struct sockaddr               *sa;
    ngx_http_collab_limit_key_t    key;
    ngx_slab_pool_t               *shpool;
    ngx_http_collab_limit_sh_t    *sh;
    ngx_http_collab_limit_slot_t  *slot;
    ngx_http_collab_loc_conf_t    *lcf;
    ngx_http_collab_main_conf_t   *mcf;
#if (NGX_HAVE_INET6)
    struct in6_addr               *a6;
#endif

    lcf = s->conf;
    mcf = ngx_http_collab_worker->mcf;
    *retry = 0;

    if (lcf->rate == 0 || mcf->limit_sh == NULL) {
        return NGX_OK;
    }

    /* s->strings holds a user of its own: a token's or collab_user's */

    if (s->authenticated && s->strings) {
        ngx_http_collab_limit_key(mcf->limit_sh, 'p', &s->user, &key);

    } else {
        sa = s->connection->sockaddr;
        ngx_str_set(&name, "unix");

        switch (sa->sa_family) {

        case AF_INET:
            name.data = (u_char *) &((struct sockaddr_in *) sa)->sin_addr;
            name.len = 4;
            break;

#if (NGX_HAVE_INET6)
        case AF_INET6:
            a6 = &((struct sockaddr_in6 *) sa)->sin6_addr;
            name.data = a6->s6_addr;
            name.len = 8;

            if (IN6_IS_ADDR_V4MAPPED(a6)) {
                name.data += 12;
                name.len = 4;
            }

            break;
#endif
        }

        ngx_http_collab_limit_key(mcf->limit_sh, 'a', &name, &key);
    }

    shpool = (ngx_slab_pool_t *) mcf->limit_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    sh = mcf->limit_sh;
    slot = &sh->slots[ngx_http_collab_limit_slot(sh, &key, 1)];
    slot->seen = ngx_current_msec;

    rc = ngx_http_collab_limit_bucket(&slot->excess, &slot->last, lcf->rate,
                                      lcf->burst, 1000, retry);

    if (peek && rc == NGX_OK) {
        slot->excess -= 1000;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (rc == NGX_BUSY) {
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_RATE_LIMITED
                                   + NGX_HTTP_COLLAB_LIMIT_POST);
    }

    return rc;
}


/*
 * Counts a session of a user (doc NULL) or a membership of a document.
 * NGX_OK: counted in the slot *index, to be released from it; NGX_DONE: no
 * limit applies, not counted; NGX_DECLINED: over the limit, not counted.
 */

ngx_int_t
ngx_http_collab_limit_acquire(ngx_http_collab_session_t *s, ngx_str_t *doc,
    ngx_uint_t *index)
{
    ngx_int_t                      rc, n;
    ngx_uint_t                     max;
    ngx_slab_pool_t               *shpool;
    ngx_http_collab_limit_sh_t    *sh;
    ngx_http_collab_limit_key_t    key;
    ngx_http_collab_limit_slot_t  *slot;
    ngx_http_collab_main_conf_t   *mcf;

    mcf = ngx_http_collab_worker->mcf;
    max = doc ? s->conf->max_doc_sessions : s->conf->max_user_sessions;

    if (max == 0 || mcf->limit_sh == NULL) {
        /* not limited here: not counted either */
        return NGX_DONE;
    }

    shpool = (ngx_slab_pool_t *) mcf->limit_zone->shm.addr;

    ngx_http_collab_limit_key(mcf->limit_sh, doc ? 'd' : 'u',
                              doc ? doc : &s->user, &key);

    ngx_shmtx_lock(&shpool->mutex);

    sh = mcf->limit_sh;
    n = ngx_http_collab_limit_slot(sh, &key, 1);
    slot = &sh->slots[n];

    if (slot->sessions >= max) {
        rc = NGX_DECLINED;

    } else {
        slot->sessions++;
        slot->seen = ngx_current_msec;
        *index = n;
        rc = NGX_OK;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (rc == NGX_DECLINED) {
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_RATE_LIMITED
                               + (doc ? NGX_HTTP_COLLAB_LIMIT_DOC_SESSIONS
                                      : NGX_HTTP_COLLAB_LIMIT_USER_SESSIONS));

        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "collab: too many sessions for %s \"%V\"",
                      doc ? "document" : "user",
                      ngx_http_collab_esc(doc ? doc : &s->user));
    }

    return rc;
}


/*
 * Releases a count from the slot it was taken in: the key may have found
 * a slot of its own since, when it was counted in a shared one.
 */

void
ngx_http_collab_limit_release(ngx_uint_t index)
{
    ngx_slab_pool_t               *shpool;
    ngx_http_collab_limit_sh_t    *sh;
    ngx_http_collab_limit_slot_t  *slot;
    ngx_http_collab_main_conf_t   *mcf;

    if (ngx_http_collab_worker == NULL) {
        return;
    }

    mcf = ngx_http_collab_worker->mcf;
    sh = mcf->limit_sh;

    if (sh == NULL || index >= sh->nslots) {
        return;
    }

    shpool = (ngx_slab_pool_t *) mcf->limit_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    slot = &sh->slots[index];

    if (slot->sessions) {
        slot->sessions--;
    }

    slot->seen = ngx_current_msec;

    ngx_shmtx_unlock(&shpool->mutex);
}


/* the slots that hold a key, for collab_metrics; NGX_DECLINED: no zone */

ngx_int_t
ngx_http_collab_limit_usage(ngx_uint_t *used, ngx_uint_t *total)
{
    ngx_uint_t                    i, n;
    ngx_slab_pool_t              *shpool;
    ngx_http_collab_limit_sh_t   *sh;
    ngx_http_collab_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_collab_module);

    if (mcf == NULL || mcf->limit_zone == NULL || mcf->limit_sh == NULL) {
        return NGX_DECLINED;
    }

    sh = mcf->limit_sh;
    shpool = (ngx_slab_pool_t *) mcf->limit_zone->shm.addr;
    n = 0;

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < sh->nslots; i++) {
        if (sh->slots[i].key.kind != 0) {
            n++;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    *used = n;
    *total = sh->nslots;

    return NGX_OK;
}
