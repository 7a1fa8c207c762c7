
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * HTTP reads: GET ?doc=D&view=state answers the stored snapshot, and
 * ?doc=D&view=deltas&since=N a bounded page of the log after N, so that a
 * page renders its first paint from a cacheable request and then
 * subscribes with since.  Both go through collab_read, which checks the
 * role and audits a denial as for subscribe.  The store's reply handler
 * only builds the answer in the request pool; the request's own write
 * event sends it and finalizes the request.
 */


static ngx_int_t ngx_http_collab_get_args(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_http_collab_get_t *g);
static ngx_int_t ngx_http_collab_get_number(ngx_http_request_t *r,
    char *name, size_t len, int64_t *n);
static ngx_int_t ngx_http_collab_get_state(ngx_http_request_t *r,
    ngx_http_collab_get_t *g, ngx_http_collab_read_t *rd);
static ngx_int_t ngx_http_collab_get_deltas(ngx_http_request_t *r,
    ngx_http_collab_get_t *g, ngx_http_collab_read_t *rd);
static size_t ngx_http_collab_get_entry_len(ngx_http_collab_get_t *g,
    ngx_http_collab_entry_t *e);
static ngx_int_t ngx_http_collab_get_etag(ngx_http_request_t *r,
    ngx_http_collab_get_t *g, ngx_str_t *epoch, int64_t seq);
static void ngx_http_collab_get_fail(ngx_http_request_t *r,
    ngx_http_collab_get_t *g, ngx_uint_t status, const char *code,
    const char *message);
static void ngx_http_collab_get_error(ngx_http_request_t *r,
    ngx_http_collab_get_t *g, ngx_uint_t status, ngx_http_collab_msg_t *m);
static void ngx_http_collab_get_finish(ngx_http_request_t *r);
static ngx_int_t ngx_http_collab_get_send(ngx_http_request_t *r,
    ngx_http_collab_get_t *g);
static ngx_int_t ngx_http_collab_get_matches(ngx_http_request_t *r,
    ngx_str_t *etag);
static ngx_int_t ngx_http_collab_get_header(ngx_http_request_t *r,
    char *key, u_char *value, size_t len);


#define NGX_HTTP_COLLAB_GET_RETRY  1000


ngx_int_t
ngx_http_collab_get_start(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf)
{
    ngx_int_t                   rc;
    ngx_msec_t                  retry;
    ngx_http_collab_get_t      *g;
    ngx_http_collab_session_t  *s;

    g = ngx_pcalloc(r->pool, sizeof(ngx_http_collab_get_t));
    if (g == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_collab_get_args(r, lcf, g);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    s = ngx_http_collab_session_create(r, lcf,
                                       NGX_HTTP_COLLAB_TRANSPORT_GET, &rc);
    if (s == NULL) {
        return rc;
    }

    ngx_http_collab_log_doc(s, &g->doc);

    /* a read costs Redis what a POSTed message does: the same budget */

    if (ngx_http_collab_limit_post(s, 0, &retry) == NGX_BUSY) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: read over the rate limit");

        retry = ngx_max(retry, 1);

        ngx_http_collab_get_error(r, g, NGX_HTTP_TOO_MANY_REQUESTS,
            ngx_http_collab_msg_build("error", "doc", 'S', &g->doc,
                                      "code", 'C', "rate_limited",
                                      "message", 'C', "too many requests: "
                                      "slow down", "retry_after_ms", 'I',
                                      (int64_t) retry, NULL));
        g->retry = retry;

        return ngx_http_collab_get_send(r, g);
    }

    /* the token was checked now; the read must not be cut by its expiry */

    if (s->expire.timer_set) {
        ngx_del_timer(&s->expire);
    }

    s->get = g;

    if (ngx_http_collab_store_fetch(s, g) != NGX_OK) {
        ngx_http_collab_get_fail(r, g, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "unavailable",
                                 "the document store is unavailable");
        return ngx_http_collab_get_send(r, g);
    }

    /* the reply comes in a later event loop turn */

    r->write_event_handler = ngx_http_collab_get_finish;
    r->main->count++;

    /* a client that leaves ends the request: its reply is cut */
    r->read_event_handler = ngx_http_test_reading;

    return NGX_DONE;
}


/* doc, view, since, limit, epoch: NGX_OK or the status that refuses them */

static ngx_int_t
ngx_http_collab_get_args(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_http_collab_get_t *g)
{
    int64_t    n;
    ngx_str_t  view;

    ngx_str_null(&view);

    if (lcf->doc
        && ngx_http_complex_value(r, lcf->doc, &g->doc) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!ngx_http_collab_doc_id_valid(g->doc.data, g->doc.len)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: a read needs a valid document id");
        return NGX_HTTP_BAD_REQUEST;
    }

    (void) ngx_http_arg(r, (u_char *) "view", 4, &view);

    g->since = -1;
    g->limit = NGX_HTTP_COLLAB_GET_LIMIT;

    if (view.len == 5 && ngx_strncmp(view.data, "state", 5) == 0) {
        return NGX_OK;
    }

    if (view.len != 6 || ngx_strncmp(view.data, "deltas", 6) != 0) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: unknown view");
        return NGX_HTTP_BAD_REQUEST;
    }

    g->since = 0;

    if (ngx_http_collab_get_number(r, "since", 5, &g->since) != NGX_OK) {
        return NGX_HTTP_BAD_REQUEST;
    }

    n = NGX_HTTP_COLLAB_GET_LIMIT;

    if (ngx_http_collab_get_number(r, "limit", 5, &n) != NGX_OK || n == 0) {
        return NGX_HTTP_BAD_REQUEST;
    }

    g->limit = (ngx_uint_t) ngx_min(n, NGX_HTTP_COLLAB_GET_LIMIT);

    if (ngx_http_arg(r, (u_char *) "epoch", 5, &g->epoch) == NGX_OK
        && g->epoch.len > NGX_HTTP_COLLAB_CURSOR_EPOCH_MAX)
    {
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* a non-negative argument; absent: *n is left as it is */

static ngx_int_t
ngx_http_collab_get_number(ngx_http_request_t *r, char *name, size_t len,
    int64_t *n)
{
    off_t      v;
    ngx_str_t  arg;

    if (ngx_http_arg(r, (u_char *) name, len, &arg) != NGX_OK) {
        return NGX_OK;
    }

    v = ngx_atoof(arg.data, arg.len);

    if (v == NGX_ERROR) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: \"%s\" is not a number", name);
        return NGX_ERROR;
    }

    *n = v;

    return NGX_OK;
}


/*
 * The store's reply: the answer is built here, while the reply's strings
 * are valid, and sent from the request's write event.
 */

void
ngx_http_collab_get_done(ngx_http_collab_session_t *s,
    ngx_http_collab_read_t *rd)
{
    ngx_int_t               rc;
    ngx_http_request_t     *r;
    ngx_http_collab_get_t  *g;

    r = s->request;
    g = s->get;

    switch (rd->status) {

    case NGX_OK:
        rc = (g->since < 0) ? ngx_http_collab_get_state(r, g, rd)
                            : ngx_http_collab_get_deltas(r, g, rd);

        if (rc == NGX_DECLINED) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "collab: the log of \"%V\" does not continue "
                          "from the snapshot", &g->doc);
            ngx_http_collab_get_fail(r, g, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                     "internal", "the log cannot be served");

        } else if (rc != NGX_OK) {
            ngx_http_collab_get_fail(r, g, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                     "internal", "the read failed");
        }

        break;

    case NGX_AGAIN:
        ngx_http_collab_get_fail(r, g, NGX_HTTP_SERVICE_UNAVAILABLE,
                                 "unavailable",
                                 "the document store is unavailable");
        break;

    case NGX_DECLINED:
        /* the same answer whether the document exists or not */
        ngx_http_collab_get_fail(r, g, NGX_HTTP_FORBIDDEN, "forbidden",
                                 "not allowed to access this document");
        break;

    default:
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "collab: reading \"%V\" failed: %s", &g->doc,
                      rd->error);
        ngx_http_collab_get_fail(r, g, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                 "internal", "the read failed");
    }

    /* a Redis reply handler does not finish the request */
    ngx_post_event(s->connection->write, &ngx_posted_events);
}


/* {"epoch":E,"seq":S,"data":J} */

static ngx_int_t
ngx_http_collab_get_state(ngx_http_request_t *r, ngx_http_collab_get_t *g,
    ngx_http_collab_read_t *rd)
{
    size_t      len;
    ngx_buf_t  *b;
    ngx_str_t   data;

    data = rd->snap;

    if (data.data == NULL) {
        ngx_str_set(&data, "null");
    }

    len = sizeof("{\"epoch\":\"\",\"seq\":,\"data\":}") - 1 + rd->epoch.len
          + NGX_INT64_LEN + data.len;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_sprintf(b->last, "{\"epoch\":\"%V\",\"seq\":%L,\"data\":%V}",
                          &rd->epoch, rd->snap_seq, &data);

    g->body = b;
    g->status = NGX_HTTP_OK;

    return ngx_http_collab_get_etag(r, g, &rd->epoch, rd->snap_seq);
}


/*
 * {"epoch":E,"head":H,["resync":R,"state":{"seq":S,"data":J},]
 *  "deltas":[delta, ...],"next":N|null}
 *
 * The entries must follow the cursor densely: a hole is never served as a
 * page (NGX_DECLINED).
 */

static ngx_int_t
ngx_http_collab_get_deltas(ngx_http_request_t *r, ngx_http_collab_get_t *g,
    ngx_http_collab_read_t *rd)
{
    size_t                   len;
    int64_t                  cursor;
    ngx_buf_t               *b;
    ngx_str_t                data;
    ngx_uint_t               i;
    const char              *resync;
    ngx_http_collab_entry_t  e;

    resync = NULL;
    cursor = g->since;
    data = rd->snap;

    if (data.data == NULL) {
        ngx_str_set(&data, "null");
    }

    if (rd->from_snap) {
        cursor = rd->snap_seq;

        if (g->epoch.len && (g->epoch.len != rd->epoch.len
                             || ngx_strncmp(g->epoch.data, rd->epoch.data,
                                            g->epoch.len) != 0))
        {
            resync = "epoch";

        } else {
            resync = (g->since > rd->head) ? "ahead" : "trimmed";
        }
    }

    len = sizeof("{\"epoch\":\"\",\"head\":,\"resync\":\"trimmed\","
                 "\"state\":{\"seq\":,\"data\":},\"deltas\":[],"
                 "\"next\":}") + rd->epoch.len + 3 * NGX_INT64_LEN
          + data.len;

    for (i = 0; i < rd->nentries; i++) {
        ngx_http_collab_store_read_entry(rd, i, &e);

        if (e.seq != cursor + 1 + (int64_t) i) {
            return NGX_DECLINED;
        }

        len += ngx_http_collab_get_entry_len(g, &e) + 1;
    }

    if (rd->nentries == 0 && cursor < rd->head) {
        return NGX_DECLINED;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_sprintf(b->last, "{\"epoch\":\"%V\",\"head\":%L,",
                          &rd->epoch, rd->head);

    if (resync) {
        b->last = ngx_sprintf(b->last, "\"resync\":\"%s\",\"state\":"
                              "{\"seq\":%L,\"data\":%V},",
                              resync, rd->snap_seq, &data);
    }

    b->last = ngx_cpymem(b->last, "\"deltas\":[", 10);

    for (i = 0; i < rd->nentries; i++) {
        ngx_http_collab_store_read_entry(rd, i, &e);

        if (i) {
            *b->last++ = ',';
        }

        /* as the WebSocket sends it: one client code for both */

        b->last = ngx_sprintf(b->last, "{\"type\":\"delta\",\"doc\":\"%V\","
                              "\"seq\":%L,\"id\":\"", &g->doc, e.seq);
        b->last = (u_char *) ngx_escape_json(b->last, e.id.data, e.id.len);
        b->last = ngx_cpymem(b->last, "\",\"user\":\"", 10);
        b->last = (u_char *) ngx_escape_json(b->last, e.user.data,
                                             e.user.len);
        b->last = ngx_sprintf(b->last, "\",\"ts\":%V,\"data\":%V}",
                              &e.ts, &e.data);
    }

    cursor += rd->nentries;

    b->last = (cursor < rd->head)
              ? ngx_sprintf(b->last, "],\"next\":%L}", cursor)
              : ngx_cpymem(b->last, "],\"next\":null}", 14);

    g->body = b;
    g->status = NGX_HTTP_OK;

    return ngx_http_collab_get_etag(r, g, &rd->epoch, rd->head);
}


static size_t
ngx_http_collab_get_entry_len(ngx_http_collab_get_t *g,
    ngx_http_collab_entry_t *e)
{
    return sizeof("{\"type\":\"delta\",\"doc\":\"\",\"seq\":,\"id\":\"\","
                  "\"user\":\"\",\"ts\":,\"data\":}") - 1
           + g->doc.len + NGX_INT64_LEN
           + e->id.len + ngx_escape_json(NULL, e->id.data, e->id.len)
           + e->user.len + ngx_escape_json(NULL, e->user.data, e->user.len)
           + e->ts.len + e->data.len;
}


/*
 * "EPOCH-SEQ-CRC": the epoch and seq (the head for deltas) name the
 * version; the checksum of the body covers what they do not, a snapshot
 * stored again at the same seq or a log trimmed under the same head.
 */

static ngx_int_t
ngx_http_collab_get_etag(ngx_http_request_t *r, ngx_http_collab_get_t *g,
    ngx_str_t *epoch, int64_t seq)
{
    uint32_t   crc;
    ngx_buf_t  *b;

    b = g->body;
    crc = ngx_crc32_long(b->pos, b->last - b->pos);

    g->etag.data = ngx_pnalloc(r->pool, epoch->len + NGX_INT64_LEN
                                        + sizeof("\"--00000000\""));
    if (g->etag.data == NULL) {
        return NGX_ERROR;
    }

    g->etag.len = ngx_sprintf(g->etag.data, "\"%V-%L-%08xD\"", epoch, seq,
                              crc)
                  - g->etag.data;

    return NGX_OK;
}


/* the usual JSON error, for the request as a whole */

static void
ngx_http_collab_get_fail(ngx_http_request_t *r, ngx_http_collab_get_t *g,
    ngx_uint_t status, const char *code, const char *message)
{
    ngx_http_collab_get_error(r, g, status,
                              ngx_http_collab_msg_error("error", code,
                                                        &g->doc, NULL, "%s",
                                                        message));

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        g->retry = NGX_HTTP_COLLAB_GET_RETRY;
    }
}


/* m NULL: no body, answered 500 */

static void
ngx_http_collab_get_error(ngx_http_request_t *r, ngx_http_collab_get_t *g,
    ngx_uint_t status, ngx_http_collab_msg_t *m)
{
    ngx_buf_t  *b;

    g->status = status;
    g->body = NULL;
    ngx_str_null(&g->etag);

    if (m == NULL) {
        return;
    }

    b = ngx_create_temp_buf(r->pool, m->len);

    if (b != NULL) {
        b->last = ngx_cpymem(b->last, m->json, m->len);
        g->body = b;
    }

    ngx_http_collab_msg_release(m);
}


/* the write handler of the request: answers once the store replied */

static void
ngx_http_collab_get_finish(ngx_http_request_t *r)
{
    ngx_http_collab_get_t      *g;
    ngx_http_collab_session_t  *s;

    s = ngx_http_get_module_ctx(r, ngx_http_collab_module);

    if (s == NULL || s->get == NULL || s->get->status == 0) {
        return;
    }

    g = s->get;

    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_http_finalize_request(r, ngx_http_collab_get_send(r, g));
}


static ngx_int_t
ngx_http_collab_get_send(ngx_http_request_t *r, ngx_http_collab_get_t *g)
{
    u_char                      buf[NGX_TIME_T_LEN];
    ngx_int_t                   rc;
    ngx_chain_t                 out;
    ngx_http_collab_session_t  *s;

    if (g->body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * The answer depends on who asks (the role): a shared cache must not
     * keep it, and the browser asks again every time, cheaply with the
     * ETag.
     */

    if (ngx_http_collab_get_header(r, "Cache-Control",
                                   (u_char *) "private, no-cache", 17)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (g->retry
        && ngx_http_collab_get_header(r, "Retry-After", buf,
                                      ngx_sprintf(buf, "%M",
                                                  (g->retry + 999) / 1000)
                                      - buf)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = g->status;

    if (g->etag.len) {
        if (ngx_http_collab_get_header(r, "ETag", g->etag.data, g->etag.len)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_http_collab_get_matches(r, &g->etag)) {
            r->headers_out.status = NGX_HTTP_NOT_MODIFIED;
            r->header_only = 1;
        }
    }

    if (!r->header_only) {
        r->headers_out.content_length_n = g->body->last - g->body->pos;
        ngx_str_set(&r->headers_out.content_type, "application/json");
        r->headers_out.content_type_len = r->headers_out.content_type.len;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    g->body->last_buf = 1;
    g->body->last_in_chain = 1;

    /* called once the session exists: the context is the session */
    s = ngx_http_get_module_ctx(r, ngx_http_collab_module);

    if (s) {
        s->log_msgs_out++;
        s->log_bytes_out += g->body->last - g->body->pos;
    }

    out.buf = g->body;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* If-None-Match: "*" or a list of entity tags, compared weakly */

static ngx_int_t
ngx_http_collab_get_matches(ngx_http_request_t *r, ngx_str_t *etag)
{
    u_char           *p, *last, *start;
    ngx_table_elt_t  *h;

    h = r->headers_in.if_none_match;

    if (h == NULL) {
        return 0;
    }

    p = h->value.data;
    last = p + h->value.len;

    while (p < last) {
        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        if (p < last && *p == '*') {
            return 1;
        }

        if (last - p > 2 && p[0] == 'W' && p[1] == '/') {
            p += 2;
        }

        start = p;

        if (p < last && *p == '"') {
            p++;

            while (p < last && *p != '"') {
                p++;
            }

            p += (p < last);
        }

        if ((size_t) (p - start) == etag->len
            && ngx_strncmp(start, etag->data, etag->len) == 0)
        {
            return 1;
        }

        while (p < last && *p != ',') {
            p++;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_collab_get_header(ngx_http_request_t *r, char *key, u_char *value,
    size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->value.data = ngx_pnalloc(r->pool, len);
    if (h->value.data == NULL) {
        h->hash = 0;
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value.len = len;
    ngx_memcpy(h->value.data, value, len);

    return NGX_OK;
}
