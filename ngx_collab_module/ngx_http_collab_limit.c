
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * Rate and connection limits.
 *
 * A session has two token buckets of its own (messages and bytes, in the
 * manner of limit_req: "excess" drains at the rate and may not pass the
 * burst).  Users and documents are counted across the workers of an
 * instance in a shared table: a slot per key hash, found by a short linear
 * probe; when the probe finds no room, keys share a slot, which can only
 * make a limit stricter, never looser.
 */


#define NGX_HTTP_COLLAB_LIMIT_PROBE    8
#define NGX_HTTP_COLLAB_LIMIT_IDLE     60000
#define NGX_HTTP_COLLAB_STRIKE_WINDOW  10000


typedef struct {
    uint32_t                     key;
    uint32_t                     sessions;
    ngx_msec_t                   last;           /* the bucket's clock */
    ngx_msec_t                   seen;           /* for reuse of the slot */
    uint64_t                     excess;
} ngx_http_collab_limit_slot_t;


typedef struct {
    ngx_uint_t                   nslots;
    ngx_http_collab_limit_slot_t slots[1];
} ngx_http_collab_limit_sh_t;


static ngx_int_t ngx_http_collab_limit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_collab_limit_slot_t *ngx_http_collab_limit_slot(
    ngx_http_collab_limit_sh_t *sh, uint32_t key, ngx_uint_t create);
static uint32_t ngx_http_collab_limit_key(const char *kind, ngx_str_t *name);
static ngx_int_t ngx_http_collab_limit_bucket(uint64_t *excess,
    ngx_msec_t *last, ngx_uint_t rate, ngx_uint_t burst, uint64_t cost,
    ngx_msec_t *retry);


/* collab_limit_zone SIZE */

char *
ngx_http_collab_limit_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_main_conf_t *mcf = conf;

    ssize_t     size;
    ngx_str_t  *value, name;

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

    ngx_str_set(&name, "collab_limits");

    mcf->limit_zone = ngx_shared_memory_add(cf, &name, size,
                                            &ngx_http_collab_module);
    if (mcf->limit_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    mcf->limit_zone->init = ngx_http_collab_limit_init_zone;
    mcf->limit_zone->data = mcf;

    return NGX_CONF_OK;
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

    shpool->data = sh;
    mcf->limit_sh = sh;

    return NGX_OK;
}


static uint32_t
ngx_http_collab_limit_key(const char *kind, ngx_str_t *name)
{
    uint32_t  crc;

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, (u_char *) kind, ngx_strlen(kind));
    ngx_crc32_update(&crc, name->data, name->len);
    ngx_crc32_final(crc);

    return crc ? crc : 1;
}


/* called with the zone locked */

static ngx_http_collab_limit_slot_t *
ngx_http_collab_limit_slot(ngx_http_collab_limit_sh_t *sh, uint32_t key,
    ngx_uint_t create)
{
    ngx_uint_t                     i, start;
    ngx_http_collab_limit_slot_t  *slot, *free;

    start = key % sh->nslots;
    free = NULL;

    for (i = 0; i < NGX_HTTP_COLLAB_LIMIT_PROBE; i++) {
        slot = &sh->slots[(start + i) % sh->nslots];

        if (slot->key == key) {
            return slot;
        }

        if (free == NULL
            && (slot->key == 0
                || (slot->sessions == 0
                    && ngx_current_msec - slot->seen
                       > NGX_HTTP_COLLAB_LIMIT_IDLE)))
        {
            free = slot;
        }
    }

    if (!create) {
        return NULL;
    }

    if (free == NULL) {
        /* shared with another key: stricter for both */
        return &sh->slots[start];
    }

    free->key = key;
    free->sessions = 0;
    free->excess = 0;
    free->last = ngx_current_msec;
    free->seen = ngx_current_msec;

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
    ngx_uint_t                     units;
    ngx_msec_t                     t;
    ngx_slab_pool_t               *shpool;
    ngx_http_collab_limit_slot_t  *slot;
    ngx_http_collab_loc_conf_t    *lcf;
    ngx_http_collab_main_conf_t   *mcf;

    lcf = s->conf;
    rc = NGX_OK;
    *retry = 0;
    units = ngx_min(cost, lcf->burst + 1) * 1000;

    if (lcf->rate && s->transport != NGX_HTTP_COLLAB_TRANSPORT_POST) {
        rc = ngx_http_collab_limit_bucket(&s->limit_excess, &s->limit_last,
                                          lcf->rate, lcf->burst, units,
                                          retry);
    }

    if (rc == NGX_OK && lcf->rate_bytes && len
        && s->transport != NGX_HTTP_COLLAB_TRANSPORT_POST)
    {
        /* bytes: "excess" counts bytes * 1000 as well */
        rc = ngx_http_collab_limit_bucket(&s->limit_bytes_excess,
                                          &s->limit_bytes_last,
                                          lcf->rate_bytes * 1000,
                                          lcf->rate_bytes_burst,
                                          (uint64_t) len * 1000, retry);
    }

    mcf = ngx_http_collab_worker->mcf;

    if (rc == NGX_OK && lcf->user_rate && mcf->limit_sh) {
        shpool = (ngx_slab_pool_t *) mcf->limit_zone->shm.addr;

        ngx_shmtx_lock(&shpool->mutex);

        slot = ngx_http_collab_limit_slot(mcf->limit_sh,
                                          ngx_http_collab_limit_key("u",
                                                                &s->user),
                                          1);

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

    /* a client that keeps going after the nacks is cut off */

    ngx_http_collab_worker->stats.rate_limited++;

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

        ngx_http_collab_worker->stats.flood_closed++;
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
 * Counts a session of a user (doc NULL) or a membership of a document.
 * NGX_OK: counted; NGX_DONE: no limit applies, not counted; NGX_DECLINED:
 * over the limit, not counted.
 */

ngx_int_t
ngx_http_collab_limit_acquire(ngx_http_collab_session_t *s, ngx_str_t *doc)
{
    ngx_int_t                      rc;
    ngx_uint_t                     max;
    ngx_slab_pool_t               *shpool;
    ngx_http_collab_limit_slot_t  *slot;
    ngx_http_collab_main_conf_t   *mcf;

    mcf = ngx_http_collab_worker->mcf;
    max = doc ? s->conf->max_doc_sessions : s->conf->max_user_sessions;

    if (max == 0 || mcf->limit_sh == NULL) {
        /* not limited here: not counted either */
        return NGX_DONE;
    }

    shpool = (ngx_slab_pool_t *) mcf->limit_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    slot = ngx_http_collab_limit_slot(mcf->limit_sh,
                                      doc ? ngx_http_collab_limit_key("d", doc)
                                          : ngx_http_collab_limit_key("u",
                                                                &s->user),
                                      1);

    if (slot->sessions >= max) {
        rc = NGX_DECLINED;

    } else {
        slot->sessions++;
        slot->seen = ngx_current_msec;
        rc = NGX_OK;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (rc == NGX_DECLINED) {
        ngx_http_collab_worker->stats.sessions_refused++;

        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "collab: too many sessions for %s \"%V\"",
                      doc ? "document" : "user",
                      ngx_http_collab_esc(doc ? doc : &s->user));
    }

    return rc;
}


void
ngx_http_collab_limit_release(ngx_http_collab_session_t *s, ngx_str_t *doc)
{
    uint32_t                       key;
    ngx_slab_pool_t               *shpool;
    ngx_http_collab_limit_sh_t    *sh;
    ngx_http_collab_limit_slot_t  *slot;
    ngx_http_collab_main_conf_t   *mcf;

    if (ngx_http_collab_worker == NULL) {
        return;
    }

    mcf = ngx_http_collab_worker->mcf;

    if (mcf->limit_sh == NULL) {
        return;
    }

    shpool = (ngx_slab_pool_t *) mcf->limit_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    sh = mcf->limit_sh;
    key = doc ? ngx_http_collab_limit_key("d", doc)
              : ngx_http_collab_limit_key("u", &s->user);

    slot = ngx_http_collab_limit_slot(sh, key, 0);

    if (slot == NULL) {
        /* it was counted in the shared fallback slot */
        slot = &sh->slots[key % sh->nslots];
    }

    if (slot->sessions) {
        slot->sessions--;
    }

    slot->seen = ngx_current_msec;

    ngx_shmtx_unlock(&shpool->mutex);
}
