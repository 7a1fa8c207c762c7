
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_sha1.h>
#include "ngx_http_collab_module.h"


/* the WebSocket transport: handshake, reading frames, framing messages */


#define NGX_HTTP_COLLAB_WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* read at most this much per event so that a flood cannot starve others */
#define NGX_HTTP_COLLAB_WS_READ_BUDGET  (256 * 1024)


static ngx_int_t ngx_http_collab_ws_token(ngx_str_t *value,
    const char *token, size_t len);
static ngx_int_t ngx_http_collab_ws_check(ngx_http_request_t *r,
    ngx_str_t *key);
static ngx_int_t ngx_http_collab_ws_target(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_str_t *doc, ngx_int_t *since,
    ngx_str_t *epoch);
static ngx_int_t ngx_http_collab_ws_accept(ngx_http_request_t *r,
    ngx_str_t *key);
static ngx_int_t ngx_http_collab_ws_header(ngx_http_request_t *r,
    ngx_str_t *key, ngx_str_t *value);
static ngx_int_t ngx_http_collab_ws_first(ngx_http_request_t *r,
    ngx_str_t *list, ngx_str_t *name);
static void ngx_http_collab_ws_switch(ngx_http_request_t *r,
    ngx_http_collab_session_t *s);
static ngx_int_t ngx_http_collab_ws_pending(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_int_t since, ngx_str_t *epoch);
static void ngx_http_collab_ws_takeover(ngx_http_request_t *r,
    ngx_http_collab_session_t *s);
static ngx_int_t ngx_http_collab_ws_refuse_version(ngx_http_request_t *r);
static void ngx_http_collab_ws_read_handler(ngx_http_request_t *r);
static void ngx_http_collab_ws_detach(ngx_event_t *ev);
static void ngx_http_collab_ws_conn_read(ngx_event_t *ev);
static void ngx_http_collab_ws_conn_write(ngx_event_t *ev);
static void ngx_http_collab_ws_read(ngx_http_collab_session_t *s);
static ngx_int_t ngx_http_collab_ws_process(ngx_http_collab_session_t *s,
    u_char *pos, u_char *last);
static ngx_int_t ngx_http_collab_ws_message(ngx_http_collab_session_t *s,
    u_char *pos, u_char *last);
static void ngx_http_collab_ws_close_received(ngx_http_collab_session_t *s,
    ngx_http_collab_ws_parser_t *p);
static ngx_int_t ngx_http_collab_ws_append(ngx_http_collab_session_t *s,
    const u_char *data, size_t len);


/* finds a token in a comma-separated header value, case-insensitively */

static ngx_int_t
ngx_http_collab_ws_token(ngx_str_t *value, const char *token, size_t len)
{
    u_char  *p, *last, *start, *end;

    p = value->data;
    last = p + value->len;

    while (p < last) {

        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        start = p;

        while (p < last && *p != ',') {
            p++;
        }

        end = p;

        while (end > start && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }

        if ((size_t) (end - start) == len
            && ngx_strncasecmp(start, (u_char *) token, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


ngx_int_t
ngx_http_collab_ws_handshake(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf)
{
    ngx_int_t                   rc, since;
    ngx_str_t                   key, doc, epoch;
    ngx_table_elt_t            *proto;
    ngx_http_collab_session_t  *s;

    rc = ngx_http_collab_ws_check(r, &key);

    if (rc == NGX_DECLINED) {
        return ngx_http_collab_ws_refuse_version(r);
    }

    if (rc != NGX_OK) {
        return rc;
    }

    since = -1;
    ngx_str_null(&epoch);

    proto = ngx_http_collab_header(r, "Sec-WebSocket-Protocol", 22);

    if (lcf->protocol == NGX_HTTP_COLLAB_PROTOCOL_YJS
        && proto && ngx_http_collab_ws_token(&proto->value, "collab.v1", 9))
    {
        /* a collab.v1 client: it would get binary Yjs messages */
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: a client offering collab.v1 at a "
                      "y-websocket location");
        return NGX_HTTP_BAD_REQUEST;
    }

    if (lcf->protocol == NGX_HTTP_COLLAB_PROTOCOL_YJS) {
        rc = ngx_http_collab_yjs_target(r, lcf, &doc);

    } else {
        rc = ngx_http_collab_ws_target(r, lcf, &doc, &since, &epoch);
    }

    if (rc != NGX_OK) {
        return rc;
    }

    s = ngx_http_collab_session_create(r, lcf,
                                       NGX_HTTP_COLLAB_TRANSPORT_WS, &rc);
    if (s == NULL) {
        return rc;
    }

    if (lcf->protocol == NGX_HTTP_COLLAB_PROTOCOL_YJS) {
        rc = ngx_http_collab_yjs_init(s, &doc);

        if (rc != NGX_OK) {
            return rc;
        }
    }

    s->parser = ngx_alloc(sizeof(ngx_http_collab_ws_parser_t),
                          r->connection->log);
    if (s->parser == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_collab_ws_parser_init(s->parser, lcf->max_message);

    /* what can fail comes before the 101: after it, only the session ends */

    if (ngx_http_collab_ws_pending(s, &doc, since, &epoch) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_collab_ws_accept(r, &key) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    s->ws_v1 = (proto
                && ngx_http_collab_ws_token(&proto->value, "collab.v1", 9));

    ngx_http_collab_ws_switch(r, s);

    if (s->yjs) {
        ngx_http_collab_yjs_start(s);
        ngx_http_collab_session_authenticated(s);

    } else if (s->authenticated) {
        ngx_http_collab_session_welcome(s);
        ngx_http_collab_session_authenticated(s);

    } else {
        ngx_http_collab_auth_wait(s);
    }

    ngx_http_collab_ws_takeover(r, s);

    return NGX_DONE;
}


/*
 * NGX_OK with the client's key; NGX_DECLINED for a version other than 13
 * (answered 426); otherwise the status to finalize with.
 */

static ngx_int_t
ngx_http_collab_ws_check(ngx_http_request_t *r, ngx_str_t *key)
{
    ngx_str_t          decoded;
    ngx_table_elt_t   *version, *hkey, *h;
    ngx_connection_t  *c;
    u_char             raw[32];

    c = r->connection;

    /* nginx does not keep the Connection header for us */
    h = ngx_http_collab_header(r, "Connection", 10);

    if (r->http_version != NGX_HTTP_VERSION_11
        || !ngx_http_collab_ws_token(&r->headers_in.upgrade->value,
                                     "websocket", 9)
        || h == NULL
        || !ngx_http_collab_ws_token(&h->value, "upgrade", 7))
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "collab: invalid WebSocket upgrade request");
        return NGX_HTTP_BAD_REQUEST;
    }

    version = ngx_http_collab_header(r, "Sec-WebSocket-Version", 21);

    if (version == NULL || version->value.len != 2
        || ngx_strncmp(version->value.data, "13", 2) != 0)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "collab: unsupported WebSocket version");
        return NGX_DECLINED;
    }

    hkey = ngx_http_collab_header(r, "Sec-WebSocket-Key", 17);

    if (hkey == NULL || hkey->value.len != 24) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "collab: missing or invalid Sec-WebSocket-Key");
        return NGX_HTTP_BAD_REQUEST;
    }

    *key = hkey->value;
    decoded.data = raw;

    if (ngx_decode_base64(&decoded, key) != NGX_OK || decoded.len != 16) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "collab: invalid Sec-WebSocket-Key");
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* the document named in the URL, resumable with ?since=&epoch= */

static ngx_int_t
ngx_http_collab_ws_target(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_str_t *doc, ngx_int_t *since,
    ngx_str_t *epoch)
{
    ngx_str_t          arg;
    ngx_connection_t  *c;

    c = r->connection;

    ngx_str_null(doc);

    if (lcf->doc) {
        if (ngx_http_complex_value(r, lcf->doc, doc) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (doc->len && !ngx_http_collab_doc_id_valid(doc->data, doc->len)) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "collab: invalid document id");
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    *since = -1;
    ngx_str_null(epoch);

    if (ngx_http_arg(r, (u_char *) "since", 5, &arg) == NGX_OK) {
        *since = ngx_atoi(arg.data, arg.len);
        if (*since == NGX_ERROR) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "collab: invalid \"since\" argument");
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    if (ngx_http_arg(r, (u_char *) "epoch", 5, &arg) == NGX_OK) {
        if (arg.len > 64) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "collab: invalid \"epoch\" argument");
            return NGX_HTTP_BAD_REQUEST;
        }

        *epoch = arg;
    }

    return NGX_OK;
}


/* the 101 response: Sec-WebSocket-Accept is base64(SHA-1(key + GUID)) */

static ngx_int_t
ngx_http_collab_ws_accept(ngx_http_request_t *r, ngx_str_t *key)
{
    ngx_str_t                    accept, digest;
    ngx_sha1_t                   sha1;
    ngx_table_elt_t             *proto;
    ngx_http_collab_loc_conf_t  *lcf;
    u_char                       hash[20];

    static ngx_str_t  upgrade = ngx_string("Upgrade");
    static ngx_str_t  websocket = ngx_string("websocket");
    static ngx_str_t  sec_accept = ngx_string("Sec-WebSocket-Accept");
    static ngx_str_t  sec_proto = ngx_string("Sec-WebSocket-Protocol");
    static ngx_str_t  collab_v1 = ngx_string("collab.v1");

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, key->data, key->len);
    ngx_sha1_update(&sha1, NGX_HTTP_COLLAB_WS_GUID,
                    sizeof(NGX_HTTP_COLLAB_WS_GUID) - 1);
    ngx_sha1_final(hash, &sha1);

    accept.len = ngx_base64_encoded_length(20);
    accept.data = ngx_pnalloc(r->pool, accept.len);
    if (accept.data == NULL) {
        return NGX_ERROR;
    }

    digest.data = hash;
    digest.len = 20;
    ngx_encode_base64(&accept, &digest);

    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    r->headers_out.content_length_n = -1;
    r->header_only = 1;
    r->keepalive = 0;
    r->lingering_close = 0;

    if (ngx_http_collab_ws_header(r, &upgrade, &websocket) != NGX_OK
        || ngx_http_collab_ws_header(r, &sec_accept, &accept) != NGX_OK)
    {
        return NGX_ERROR;
    }

    proto = ngx_http_collab_header(r, "Sec-WebSocket-Protocol", 22);

    if (proto == NULL) {
        return NGX_OK;
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_collab_module);

    if (lcf->protocol == NGX_HTTP_COLLAB_PROTOCOL_YJS) {
        /* y-websocket names none of its own: the first offered is taken */
        return ngx_http_collab_ws_first(r, &proto->value, &sec_proto);
    }

    if (ngx_http_collab_ws_token(&proto->value, "collab.v1", 9)) {
        return ngx_http_collab_ws_header(r, &sec_proto, &collab_v1);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_collab_ws_first(ngx_http_request_t *r, ngx_str_t *list,
    ngx_str_t *name)
{
    u_char     *p, *last;
    ngx_str_t   value;

    p = list->data;
    last = p + list->len;

    while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
        p++;
    }

    value.data = p;

    while (p < last && *p != ',' && *p != ' ' && *p != '\t') {
        p++;
    }

    value.len = p - value.data;

    if (value.len == 0) {
        return NGX_OK;
    }

    return ngx_http_collab_ws_header(r, name, &value);
}


static ngx_int_t
ngx_http_collab_ws_header(ngx_http_request_t *r, ngx_str_t *key,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *key;
    h->value = *value;

    return NGX_OK;
}


/* the 101 went to the filters: the connection speaks WebSocket from here */

static void
ngx_http_collab_ws_switch(ngx_http_request_t *r, ngx_http_collab_session_t *s)
{
    r->main->count++;
    r->read_event_handler = ngx_http_collab_ws_read_handler;

    /* small frames must not wait for Nagle and delayed ACKs */
    (void) ngx_tcp_nodelay(r->connection);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "collab: websocket session %*s", (size_t) 16, s->id);

    ngx_http_collab_session_start_timers(s);
}


/*
 * The document of the URL and its resume cursor, kept out of the request
 * pool for a session that authenticates later.
 */

static ngx_int_t
ngx_http_collab_ws_pending(ngx_http_collab_session_t *s, ngx_str_t *doc,
    ngx_int_t since, ngx_str_t *epoch)
{
    s->cursor_since = since;

    if (doc->len) {
        ngx_http_collab_log_doc(s, doc);
    }

    if (doc->len == 0 && epoch->len == 0) {
        return NGX_OK;
    }

    s->pending_buf = ngx_alloc(doc->len + epoch->len, s->connection->log);
    if (s->pending_buf == NULL) {
        return NGX_ERROR;
    }

    s->pending_doc.data = s->pending_buf;
    s->pending_doc.len = doc->len;
    ngx_memcpy(s->pending_doc.data, doc->data, doc->len);

    s->cursor_epoch.data = s->pending_buf + doc->len;
    s->cursor_epoch.len = epoch->len;
    ngx_memcpy(s->cursor_epoch.data, epoch->data, epoch->len);

    return NGX_OK;
}


/* reads what came with the handshake, then leaves the request behind */

static void
ngx_http_collab_ws_takeover(ngx_http_request_t *r,
    ngx_http_collab_session_t *s)
{
    u_char            *p;
    ngx_connection_t  *c;

    c = r->connection;

    if (r->header_in->pos < r->header_in->last) {
        p = r->header_in->pos;
        r->header_in->pos = r->header_in->last;

        s->last_recv = ngx_current_msec;

        (void) ngx_http_collab_ws_process(s, p, r->header_in->last);
    }

    ngx_post_event(c->read, &ngx_posted_events);

    /* outside the request handler: it must not see the request go */
    s->detach.handler = ngx_http_collab_ws_detach;
    s->detach.data = s;
    s->detach.log = c->log;
    ngx_post_event(&s->detach, &ngx_posted_events);
}


/*
 * Once the 101 is out, the HTTP request is of no further use: it is freed
 * and the session keeps the connection alone.  What an idle WebSocket
 * costs is then the session, its parser and the connection's own pool,
 * not the request's pool with its headers.
 */

static void
ngx_http_collab_ws_detach(ngx_event_t *ev)
{
    ngx_buf_t                  *b;
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_collab_session_t  *s;

    s = ev->data;
    r = s->request;
    c = s->connection;

    if (r == NULL || s->closing || r->main->count != 1
        || r->main->posted_requests)
    {
        return;
    }

    if (r->pool->cleanup) {
        /*
         * What other modules hung on the request's pool must run when the
         * session ends, not now: limit_conn's count of the connection,
         * realip's restoring of the address.  Such a session keeps its
         * request.
         */
        return;
    }

    if (ngx_http_collab_log_wanted(r)) {
        /*
         * The access log line is written when the session ends, from the
         * request (any variable of the log format may need it): only
         * "access_log off" sessions go without.
         */
        return;
    }

    if (r->out || c->buffered) {
        if (ngx_http_output_filter(r, NULL) == NGX_ERROR
            || r->out || c->buffered)
        {
            /* a 101 that did not go out at once: it stays a request */
            return;
        }
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "collab: session %*s detached from its request",
                   (size_t) 16, s->id);

    /* the request's cleanup no longer applies to the session */
    s->cln->handler = NULL;

    /* the request line and headers live in it until the request is logged */
    b = (c->buffer && c->buffer == r->header_in) ? c->buffer : NULL;

    ngx_http_free_request(r, 0);

    if (b && ngx_pfree(c->pool, b->start) == NGX_OK) {
        /* the handshake's bytes were consumed: its buffer is free */
        c->buffer = NULL;
    }

    s->request = NULL;
    c->destroyed = 0;
    c->data = s;
    c->log->action = NULL;

    c->read->handler = ngx_http_collab_ws_conn_read;
    c->write->handler = ngx_http_collab_ws_conn_write;

    if (c->read->ready || s->rest) {
        ngx_post_event(c->read, &ngx_posted_events);
    }

    if (s->out) {
        ngx_post_event(c->write, &ngx_posted_events);
    }
}


static void
ngx_http_collab_ws_conn_read(ngx_event_t *ev)
{
    ngx_connection_t           *c;
    ngx_http_collab_session_t  *s;

    c = ev->data;
    s = c->data;

    if (c->close) {
        /* worker_shutdown_timeout */
        ngx_http_collab_session_finalize(s);
        return;
    }

    ngx_http_collab_ws_read(s);
}


static void
ngx_http_collab_ws_conn_write(ngx_event_t *ev)
{
    ngx_connection_t           *c;
    ngx_http_collab_session_t  *s;

    c = ev->data;
    s = c->data;

    if (ev->timedout) {
        ev->timedout = 0;
    }

    ngx_http_collab_session_flush(s);
}


/* 426 has no reason phrase in nginx's table: answer it ourselves */

static ngx_int_t
ngx_http_collab_ws_refuse_version(ngx_http_request_t *r)
{
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

    static u_char  text[] = "unsupported WebSocket version, use 13\n";

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Sec-WebSocket-Version");
    ngx_str_set(&h->value, "13");

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = text;
    b->last = text + sizeof(text) - 1;
    b->memory = 1;
    b->last_buf = 1;

    r->headers_out.status = 426;
    ngx_str_set(&r->headers_out.status_line, "426 Upgrade Required");
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "text/plain");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static void
ngx_http_collab_ws_read_handler(ngx_http_request_t *r)
{
    ngx_http_collab_session_t  *s;

    s = ngx_http_get_module_ctx(r, ngx_http_collab_module);
    if (s == NULL) {
        return;
    }

    ngx_http_collab_ws_read(s);
}


static void
ngx_http_collab_ws_read(ngx_http_collab_session_t *s)
{
    u_char                    *p;
    size_t                     total;
    ssize_t                    n;
    ngx_int_t                  rc;
    ngx_connection_t          *c;
    ngx_http_collab_worker_t  *w;

    c = s->connection;
    w = ngx_http_collab_worker;
    total = 0;

    for ( ;; ) {

        if (s->close_received) {
            return;
        }

        /* ingress backpressure: TCP pushes back while Redis catches up */

        if (s->inflight >= s->conf->max_inflight && !s->closing) {
            s->read_blocked = 1;
            return;
        }

        /*
         * A peer that does not take its replies is not read from until its
         * queue drained to half (ngx_http_collab_session_flush()): whatever
         * it sends, what it makes the worker hold stays bounded.
         */

        if (s->out_bytes >= s->conf->send_queue && !s->closing) {
            s->read_full = 1;
            return;
        }

        if (s->rest) {
            /* what was left of the last read when the limit was reached */

            p = s->rest;
            n = s->rest_len;
            s->rest = NULL;

            rc = ngx_http_collab_ws_process(s, p, p + n);

            ngx_free(p);

            if (rc == NGX_DONE) {
                return;
            }

            continue;
        }

        if (total >= NGX_HTTP_COLLAB_WS_READ_BUDGET) {
            ngx_post_event(c->read, &ngx_posted_events);
            return;
        }

        n = c->recv(c, w->recv_buf, w->recv_size);

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                c->error = 1;
                ngx_http_collab_session_finalize(s);
            }

            return;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                           "collab: peer closed the connection");

            c->error = 1;
            ngx_http_collab_session_finalize(s);
            return;
        }

        total += n;
        s->last_recv = ngx_current_msec;

        if (ngx_http_collab_ws_process(s, w->recv_buf, w->recv_buf + n)
            == NGX_DONE)
        {
            return;
        }
    }
}


static ngx_int_t
ngx_http_collab_ws_process(ngx_http_collab_session_t *s, u_char *pos,
    u_char *last)
{
    ngx_http_collab_ws_parser_t  *p;

    p = s->parser;

    for ( ;; ) {

        switch (ngx_http_collab_ws_parse(p, &pos, last)) {

        case NGX_HTTP_COLLAB_WS_AGAIN:
            return NGX_OK;

        case NGX_HTTP_COLLAB_WS_MSG_START:
            if (s->closing) {
                /* nothing more is read */

            } else if (s->yjs && p->opcode != NGX_HTTP_COLLAB_WS_OP_BINARY) {
                s->shutdown = 1;
                ngx_http_collab_session_close(s, 1003,
                                              "text messages are not "
                                              "supported");

            } else if (!s->yjs && p->opcode == NGX_HTTP_COLLAB_WS_OP_BINARY) {
                s->shutdown = 1;

                if (s->ws_v1) {
                    ngx_http_collab_session_close(s, 1003,
                                                  "binary messages are not "
                                                  "supported");

                } else {
                    /*
                     * Most likely a y-websocket provider (it offers no
                     * subprotocol and sends a binary step 1 at once):
                     * 4400 ends it instead of its endless retries.
                     */
                    ngx_http_collab_session_close(s, 4400,
                                                  "use a y-websocket "
                                                  "location");
                }
            }

            s->msg_len = 0;
            break;

        case NGX_HTTP_COLLAB_WS_MSG_DATA:
            if (s->closing) {
                break;
            }

            if (ngx_http_collab_ws_append(s, p->data, p->len) != NGX_OK) {
                s->shutdown = 1;
                ngx_http_collab_session_close(s, 1011, "out of memory");
            }

            break;

        case NGX_HTTP_COLLAB_WS_MSG_END:
            if (s->closing) {
                break;
            }

            if (ngx_http_collab_ws_message(s, pos, last) == NGX_DONE) {
                return NGX_DONE;
            }

            break;

        case NGX_HTTP_COLLAB_WS_CONTROL:

            if (p->opcode == NGX_HTTP_COLLAB_WS_OP_PING) {
                (void) ngx_http_collab_session_send_ctl(s,
                                                 NGX_HTTP_COLLAB_WS_OP_PONG,
                                                 (u_char *) p->data, p->len);
                break;
            }

            if (p->opcode != NGX_HTTP_COLLAB_WS_OP_CLOSE) {
                break;
            }

            ngx_http_collab_ws_close_received(s, p);
            return NGX_DONE;

        default: /* NGX_HTTP_COLLAB_WS_ERROR */

            ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                          "collab: WebSocket protocol error: %s",
                          p->error ? p->error : "unknown");

            if (s->closing) {
                s->close_received = 1;
                ngx_http_collab_session_post_write(s);
                return NGX_DONE;
            }

            s->shutdown = 1;
            ngx_http_collab_session_close(s, p->close_code, p->error);
            return NGX_DONE;
        }
    }
}


/* a whole message; NGX_DONE: the rest of this read [pos, last) waits */

static ngx_int_t
ngx_http_collab_ws_message(ngx_http_collab_session_t *s, u_char *pos,
    u_char *last)
{
    if (s->yjs) {
        ngx_http_collab_yjs_message(s, s->msg, s->msg_len);

    } else {
        ngx_http_collab_proto_handle(s, s->msg, s->msg_len,
                                     NGX_HTTP_COLLAB_NO_SLOT);
    }

    s->msg_len = 0;

    /* an idle session keeps no message buffer */
    ngx_free(s->msg);
    s->msg = NULL;
    s->msg_size = 0;

    if ((s->inflight < s->conf->max_inflight
         && s->out_bytes < s->conf->send_queue)
        || pos >= last || s->closing)
    {
        return NGX_OK;
    }

    /*
     * Enough deltas in flight, or a full queue: the rest of this read
     * waits, and nothing more is read until acks come back or the queue
     * drains (see ws_read()).
     */

    s->rest = ngx_alloc(last - pos, s->connection->log);
    if (s->rest == NULL) {
        s->shutdown = 1;
        ngx_http_collab_session_close(s, 1011, "out of memory");
        return NGX_DONE;
    }

    s->rest_len = last - pos;
    ngx_memcpy(s->rest, pos, s->rest_len);

    if (s->inflight >= s->conf->max_inflight) {
        s->read_blocked = 1;

    } else {
        s->read_full = 1;
    }

    return NGX_DONE;
}


/* the peer's close frame: echo its status code, as RFC 6455 5.5.1 suggests */

static void
ngx_http_collab_ws_close_received(ngx_http_collab_session_t *s,
    ngx_http_collab_ws_parser_t *p)
{
    u_char  code[2];

    s->close_received = 1;

    if (s->close_code == 0) {
        /* the peer closed first: its code, 1005 for none */
        s->close_code = (p->len >= 2) ? (ngx_uint_t) p->data[0] << 8
                                        | p->data[1]
                                      : 1005;
    }

    if (!s->close_sent) {
        s->closing = 1;
        s->finalize = 1;
        s->closed_at = ngx_current_msec;

        if (s->ping.timer_set) {
            ngx_del_timer(&s->ping);
        }

        if (p->len >= 2) {
            code[0] = p->data[0];
            code[1] = p->data[1];
            (void) ngx_http_collab_session_send_ctl(s,
                                                NGX_HTTP_COLLAB_WS_OP_CLOSE,
                                                code, 2);

        } else {
            (void) ngx_http_collab_session_send_ctl(s,
                                                NGX_HTTP_COLLAB_WS_OP_CLOSE,
                                                NULL, 0);
        }

        if (!s->linger.timer_set) {
            ngx_add_timer(&s->linger, NGX_HTTP_COLLAB_LINGER);
        }
    }

    ngx_http_collab_session_post_write(s);
}


static ngx_int_t
ngx_http_collab_ws_append(ngx_http_collab_session_t *s, const u_char *data,
    size_t len)
{
    u_char  *p;
    size_t   size;

    if (s->msg_len + len > s->msg_size) {
        size = s->msg_size ? s->msg_size * 2 : 1024;

        while (size < s->msg_len + len) {
            size *= 2;
        }

        if (size > s->conf->max_message) {
            size = s->conf->max_message;
        }

        if (size < s->msg_len + len) {
            return NGX_ERROR;
        }

        p = ngx_alloc(size, s->connection->log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (s->msg) {
            ngx_memcpy(p, s->msg, s->msg_len);
            ngx_free(s->msg);
        }

        s->msg = p;
        s->msg_size = size;
    }

    ngx_memcpy(s->msg + s->msg_len, data, len);
    s->msg_len += len;

    return NGX_OK;
}


/* frames a message once for all WebSocket sessions it goes to */

u_char *
ngx_http_collab_ws_frame(ngx_http_collab_msg_t *m, size_t *len)
{
    u_char  *p;
    size_t   n;

    if (m->ws == NULL) {
        n = m->len;

        if (n < 126) {
            p = m->json - 2;
            p[1] = (u_char) n;

        } else if (n < 65536) {
            p = m->json - 4;
            p[1] = 126;
            p[2] = (u_char) (n >> 8);
            p[3] = (u_char) n;

        } else {
            p = m->json - 10;
            p[1] = 127;
            p[2] = 0;
            p[3] = 0;
            p[4] = 0;
            p[5] = 0;
            p[6] = (u_char) (n >> 24);
            p[7] = (u_char) (n >> 16);
            p[8] = (u_char) (n >> 8);
            p[9] = (u_char) n;
        }

        p[0] = 0x80 | NGX_HTTP_COLLAB_WS_OP_TEXT;

        m->ws = p;
        m->ws_len = (m->json - p) + n;
    }

    *len = m->ws_len;

    return m->ws;
}


void
ngx_http_collab_ws_fail(ngx_http_collab_session_t *s, ngx_uint_t code,
    const char *reason)
{
    size_t  len;
    u_char  payload[125];

    payload[0] = (u_char) (code >> 8);
    payload[1] = (u_char) code;

    len = reason ? ngx_strlen(reason) : 0;

    if (len > sizeof(payload) - 2) {
        len = sizeof(payload) - 2;
    }

    ngx_memcpy(payload + 2, reason, len);

    (void) ngx_http_collab_session_send_ctl(s, NGX_HTTP_COLLAB_WS_OP_CLOSE,
                                            payload, len + 2);
}


ngx_int_t
ngx_http_collab_ws_ping(ngx_http_collab_session_t *s)
{
    return ngx_http_collab_session_send_ctl(s, NGX_HTTP_COLLAB_WS_OP_PING,
                                            (u_char *) "collab", 6);
}


ngx_int_t
ngx_http_collab_ws_flush(ngx_http_collab_session_t *s)
{
    ngx_chain_t         *cl;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    c = s->connection;
    r = s->request;

    if (r && (r->out || c->buffered)) {
        /* the rest of the 101 response */

        if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (r->out || c->buffered) {
            return NGX_AGAIN;
        }
    }

    /*
     * Over TLS, what OpenSSL could not write at EAGAIN stays in the SSL
     * buffer (NGX_SSL_BUFFERED) after its bufs were released: a send_chain()
     * without input flushes it, and the session is not done until it went.
     */

    if (s->out == NULL && !c->buffered) {
        return NGX_OK;
    }

    if (!c->write->ready) {
        return ngx_handle_write_event(c->write, 0) == NGX_OK
               ? NGX_AGAIN : NGX_ERROR;
    }

    cl = c->send_chain(c, s->out ? &s->out->cl : NULL, 0);

    if (cl == NGX_CHAIN_ERROR) {
        return NGX_ERROR;
    }

    ngx_http_collab_session_sent(s);

    if (s->out || c->buffered) {
        if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    return NGX_OK;
}
