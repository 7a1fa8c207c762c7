
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"
#include "ngx_http_collab_yjsparse.h"


/*
 * The y-websocket protocol (collab_protocol y-websocket): a WebSocket
 * session of one document whose messages are binary Yjs messages.  It has
 * no document of its own: an update is a delta of the log (its bytes in
 * base64, a JSON string), replayed and relayed as the deltas of collab.v1
 * are; awareness is the member's presence.  Inbound messages become the
 * operations of proto.c; what the session is sent is translated here.
 */


/* client ids of one connection whose awareness is ended for them */
#define NGX_HTTP_COLLAB_YJS_CLIENTS    8

/*
 * Yjs client ids are 32-bit; a clock grows by one a local change, so one
 * beyond 2^32, or that jumps by more than 2^16 within a session, is only
 * there to make the owner's next clock overflow: its entry is dropped.
 */
#define NGX_HTTP_COLLAB_YJS_ID_MAX     0xffffffff
#define NGX_HTTP_COLLAB_YJS_CLOCK_MAX  0xffffffff
#define NGX_HTTP_COLLAB_YJS_CLOCK_JUMP 65536


struct ngx_http_collab_yjs_s {
    ngx_str_t                    doc;
    uint64_t                     ops;            /* op ids sent */
    uint64_t                     compact_seq;    /* the snapshot asked */
    ngx_uint_t                   step1s;         /* not answered yet */
    ngx_uint_t                   nclients;
    uint64_t                     client[NGX_HTTP_COLLAB_YJS_CLIENTS];
    uint64_t                     clock[NGX_HTTP_COLLAB_YJS_CLIENTS];
    u_char                      *awareness;      /* waits for the join */
    size_t                       awareness_len;
    uint64_t                     aw_excess;      /* awareness budget */
    ngx_msec_t                   aw_last;
    unsigned                     synced:1;       /* its step 2 went out */
    unsigned                     owned:1;        /* client[] are known */
    unsigned                     compacting:1;   /* its step 2 is the
                                                    snapshot */
    unsigned                     storing:1;      /* the snapshot's reply
                                                    is not the client's */
    unsigned                     query:1;        /* a query waits for
                                                    the list in flight */
    unsigned                     refused:1;      /* an update was */
    unsigned                     warned:1;       /* awareness too large */
    u_char                       doc_buf[NGX_HTTP_COLLAB_DOC_MAX];
};


static void ngx_http_collab_yjs_update(ngx_http_collab_session_t *s,
    const u_char *data, size_t len);
static void ngx_http_collab_yjs_query(ngx_http_collab_session_t *s);
static void ngx_http_collab_yjs_awareness(ngx_http_collab_session_t *s,
    const u_char *p, size_t len, const u_char *data, size_t dlen);
static ngx_int_t ngx_http_collab_yjs_clients(ngx_http_collab_session_t *s,
    const u_char *data, size_t len, u_char *own, size_t *own_len);
static ngx_uint_t ngx_http_collab_yjs_taken(ngx_http_collab_session_t *s,
    uint64_t client);
static ngx_uint_t ngx_http_collab_yjs_mine(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m);
static void ngx_http_collab_yjs_presence(ngx_http_collab_sub_t *sub,
    const u_char *data, size_t len);
static ngx_uint_t ngx_http_collab_yjs_base64(const u_char *p, size_t len);
static ngx_http_collab_msg_t *ngx_http_collab_yjs_frame(u_char type,
    ngx_int_t sub, const u_char *data, size_t len, ngx_uint_t b64);
static ngx_int_t ngx_http_collab_yjs_queue(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m);
static ngx_int_t ngx_http_collab_yjs_string(ngx_http_collab_session_t *s,
    u_char type, ngx_int_t sub, json_t *v);
static ngx_int_t ngx_http_collab_yjs_control(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m);
static ngx_uint_t ngx_http_collab_yjs_wanted(ngx_http_collab_session_t *s,
    ngx_str_t *type);
static ngx_int_t ngx_http_collab_yjs_snapshot(ngx_http_collab_session_t *s,
    json_t *obj);
static void ngx_http_collab_yjs_denied(ngx_http_collab_session_t *s);
static void ngx_http_collab_yjs_known(ngx_http_collab_session_t *s,
    json_t *obj);
static void ngx_http_collab_yjs_step2(ngx_http_collab_session_t *s);
static void ngx_http_collab_yjs_step1(ngx_http_collab_session_t *s);
static void ngx_http_collab_yjs_compact(ngx_http_collab_session_t *s);
static void ngx_http_collab_yjs_snapshot_store(ngx_http_collab_session_t *s,
    const u_char *data, size_t len);
static ngx_int_t ngx_http_collab_yjs_json(ngx_http_collab_session_t *s,
    const u_char *data, size_t len, ngx_str_t *json);


/*
 * The room: the value of collab_doc when it is set, else the URL path
 * after the location's prefix (the last path segment in a regex
 * location), validated as any document id.
 */

ngx_int_t
ngx_http_collab_yjs_target(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_str_t *doc)
{
    u_char                    *p, *last;
    ngx_http_core_loc_conf_t  *clcf;

    if (lcf->doc) {
        if (ngx_http_complex_value(r, lcf->doc, doc) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

    } else {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        p = r->uri.data;
        last = p + r->uri.len;

        if (
#if (NGX_PCRE)
            clcf->regex == NULL &&
#endif
            r->uri.len >= clcf->name.len
            && ngx_strncmp(p, clcf->name.data, clcf->name.len) == 0)
        {
            p += clcf->name.len;

        } else {
            p = last;

            while (p > r->uri.data && p[-1] != '/') {
                p--;
            }
        }

        if (p < last && *p == '/') {
            p++;
        }

        doc->data = p;
        doc->len = last - p;
    }

    if (!ngx_http_collab_doc_id_valid(doc->data, doc->len)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: invalid y-websocket room \"%V\"",
                      ngx_http_collab_esc(doc));
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* before the 101: what the session needs besides a WebSocket's */

ngx_int_t
ngx_http_collab_yjs_init(ngx_http_collab_session_t *s, ngx_str_t *doc)
{
    ngx_http_collab_yjs_t  *y;

    if (!s->authenticated) {
        /* no "auth" message in this protocol: the token came or not */
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "collab: y-websocket session without a token");
        return NGX_HTTP_UNAUTHORIZED;
    }

    y = ngx_calloc(sizeof(ngx_http_collab_yjs_t), s->connection->log);
    if (y == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    y->doc.data = y->doc_buf;
    y->doc.len = doc->len;
    ngx_memcpy(y->doc_buf, doc->data, doc->len);

    s->yjs = y;

    return NGX_OK;
}


void
ngx_http_collab_yjs_free(ngx_http_collab_session_t *s)
{
    if (s->yjs == NULL) {
        return;
    }

    if (s->yjs->awareness) {
        ngx_free(s->yjs->awareness);
    }

    ngx_free(s->yjs);
    s->yjs = NULL;
}


/*
 * After the 101: a sync step 1 with an empty state vector, so that the
 * client answers with all it has (edits made offline included) as its
 * step 2.  It goes before the replay: a client that comes with an empty
 * document answers with an empty update, which is not stored.
 */

void
ngx_http_collab_yjs_start(ngx_http_collab_session_t *s)
{
    ngx_http_collab_yjs_step1(s);
}


static void
ngx_http_collab_yjs_step1(ngx_http_collab_session_t *s)
{
    static u_char  empty_sv[] = { 0 };

    s->yjs->step1s++;

    (void) ngx_http_collab_yjs_queue(s,
               ngx_http_collab_yjs_frame(NGX_HTTP_COLLAB_YJS_SYNC,
                                         NGX_HTTP_COLLAB_YJS_STEP1,
                                         empty_sv, 1, 0));
}


/*
 * The membership read the whole log: a step 2 (an empty update) tells the
 * client it has everything ("synced"); the awareness that came before the
 * join goes out now.
 */

void
ngx_http_collab_yjs_live(ngx_http_collab_sub_t *sub)
{
    ngx_http_collab_yjs_t      *y;
    ngx_http_collab_session_t  *s;

    s = sub->session;
    y = s->yjs;

    if (y->awareness) {
        ngx_http_collab_yjs_presence(sub, y->awareness, y->awareness_len);
        ngx_free(y->awareness);
        y->awareness = NULL;
    }

    if (!y->synced) {
        y->synced = 1;
        ngx_http_collab_yjs_step2(s);
    }

    ngx_http_collab_yjs_compact(s);
}


static void
ngx_http_collab_yjs_step2(ngx_http_collab_session_t *s)
{
    static u_char  empty_update[] = { 0, 0 };

    (void) ngx_http_collab_yjs_queue(s,
               ngx_http_collab_yjs_frame(NGX_HTTP_COLLAB_YJS_SYNC,
                                         NGX_HTTP_COLLAB_YJS_STEP2,
                                         empty_update, 2, 0));
}


/* a whole binary message of the client */

void
ngx_http_collab_yjs_message(ngx_http_collab_session_t *s, u_char *p,
    size_t len)
{
    ngx_int_t                   rc;
    ngx_msec_t                  retry;
    ngx_http_collab_yjs_msg_t   msg;

    s->log_msgs_in++;
    ngx_http_collab_metric_add(NGX_HTTP_COLLAB_M_BYTES_IN, len);

    if (ngx_http_collab_yjs_parse(p, len, &msg) != 0) {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "collab: malformed y-websocket message: %s",
                      msg.error);

        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_IN
                                   + NGX_HTTP_COLLAB_MT_OTHER);
        s->shutdown = 1;
        ngx_http_collab_session_close(s, 1007, msg.error);
        return;
    }

    if (msg.type == NGX_HTTP_COLLAB_YJS_AWARENESS) {
        ngx_http_collab_yjs_awareness(s, p, msg.data + msg.len - p,
                                      msg.data, msg.len);
        return;
    }

    /* every other message costs as a delta: an answer can cost Redis */

    rc = ngx_http_collab_limit_message(s, NGX_HTTP_COLLAB_COST_DELTA, len,
                                       &retry);
    if (rc == NGX_DONE) {
        return;
    }

    if (rc == NGX_BUSY) {
        if (msg.type != NGX_HTTP_COLLAB_YJS_SYNC
            || msg.sync == NGX_HTTP_COLLAB_YJS_STEP1)
        {
            /* a step 1 or query over the limit goes unanswered */
            return;
        }

        if (msg.sync == NGX_HTTP_COLLAB_YJS_STEP2 && s->yjs->step1s
            && s->yjs->compacting)
        {
            /* a snapshot not stored: the log still has it all */
            s->yjs->step1s--;
            s->yjs->compacting = 0;
            return;
        }

        /* an update lost to the others: its step 2 brings it again */
        ngx_http_collab_session_close(s, 4429, "rate limited");
        return;
    }

    switch (msg.type) {

    case NGX_HTTP_COLLAB_YJS_SYNC:

        if (msg.sync == NGX_HTTP_COLLAB_YJS_STEP2 && s->yjs->step1s) {
            /* the answer to a step 1 of ours */
            s->yjs->step1s--;

            if (s->yjs->compacting) {
                ngx_http_collab_yjs_snapshot_store(s, msg.data, msg.len);
                return;
            }
        }

        if (msg.sync != NGX_HTTP_COLLAB_YJS_STEP1) {
            ngx_http_collab_yjs_update(s, msg.data, msg.len);
            ngx_http_collab_yjs_compact(s);
            return;
        }

        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_IN
                                   + NGX_HTTP_COLLAB_MT_OTHER);

        /* before the join, the step 2 comes once the log was read */

        if (s->yjs->synced) {
            ngx_http_collab_yjs_step2(s);
        }

        return;

    default: /* NGX_HTTP_COLLAB_YJS_QUERY */

        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_IN
                                   + NGX_HTTP_COLLAB_MT_OTHER);

        s->yjs->query = 1;
        ngx_http_collab_yjs_query(s);

        return;
    }
}


/*
 * Query awareness: the snapshot of the presence, every member's latest
 * state, a list in Redis.  One is in flight per membership; the queries
 * that come meanwhile are answered once, after it (yjs_snapshot).
 */

static void
ngx_http_collab_yjs_query(ngx_http_collab_session_t *s)
{
    ngx_http_collab_sub_t  *sub;

    sub = ngx_http_collab_doc_find(s, &s->yjs->doc);

    if (sub == NULL || sub->state == NGX_HTTP_COLLAB_SUB_JOINING
        || !sub->presence_ready || s->closing)
    {
        /* the join's snapshot, or the one in flight, answers first */
        return;
    }

    s->yjs->query = 0;
    ngx_http_collab_presence_join(sub);
}


/*
 * An update or a step 2: one delta of the log, "data" its base64 text.
 * The empty update (a client that has nothing) is not stored.  A refused
 * update is lost to the others, so over a limit the session is closed
 * with a code the client retries: its step 2 brings the update again.
 */

static void
ngx_http_collab_yjs_update(ngx_http_collab_session_t *s, const u_char *data,
    size_t len)
{
    ngx_str_t               id, json;
    ngx_http_collab_yjs_t  *y;
    u_char                  idbuf[16 + 1 + NGX_INT64_LEN];

    y = s->yjs;

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_IN
                               + ngx_http_collab_metrics_type(
                                     (u_char *) "delta", 5));

    /* charged by yjs_message */

    if (len == 2 && data[0] == 0 && data[1] == 0) {
        return;
    }

    if (ngx_http_collab_acl_check(s, &y->doc, NGX_HTTP_COLLAB_ROLE_EDITOR,
                                  "delta")
        != NGX_OK)
    {
        ngx_http_collab_yjs_denied(s);
        return;
    }

    if (ngx_http_collab_yjs_json(s, data, len, &json) != NGX_OK) {
        ngx_http_collab_session_close(s, 1011, "out of memory");
        return;
    }

    id.data = idbuf;
    id.len = ngx_sprintf(idbuf, "%*s-%uL", (size_t) 16, s->id, ++y->ops)
             - idbuf;

    (void) ngx_http_collab_store_append(s, &y->doc, &id, &json, -1,
                                        NGX_HTTP_COLLAB_NO_SLOT);

    ngx_free(json.data);
}


/*
 * Awareness: the entries of the sender's own clients are echoed to it at
 * once (a lone client takes that as the sign that its connection lives)
 * and are its presence for the others, coalesced as every presence.  The
 * stock client also passes on every state it was sent: those entries are
 * dropped, and a message of nothing else costs nothing.
 */

static void
ngx_http_collab_yjs_awareness(ngx_http_collab_session_t *s, const u_char *p,
    size_t len, const u_char *data, size_t dlen)
{
    u_char                 *own, *q;
    size_t                  own_len, n;
    ngx_http_collab_yjs_t  *y;
    ngx_http_collab_msg_t  *m;
    ngx_http_collab_sub_t  *sub;

    y = s->yjs;

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_IN
                               + NGX_HTTP_COLLAB_MT_PRESENCE);

    own = ngx_alloc(dlen + NGX_HTTP_COLLAB_YJS_UINT_LEN, s->connection->log);
    if (own == NULL) {
        return;
    }

    if (ngx_http_collab_yjs_clients(s, data, dlen, own, &own_len) != NGX_OK) {
        ngx_free(own);
        s->shutdown = 1;
        ngx_http_collab_session_close(s, 1007, "malformed awareness update");
        return;
    }

    if (own_len == 0) {
        /* only states of others, or over its budget */
        ngx_free(own);
        return;
    }

    /* the echo: [1, length, the own entries] */

    m = ngx_http_collab_msg_alloc(1 + NGX_HTTP_COLLAB_YJS_UINT_LEN + own_len);
    if (m) {
        q = m->json;
        *q++ = NGX_HTTP_COLLAB_YJS_AWARENESS;
        q += ngx_http_collab_yjs_put_uint(q, own_len);
        q = ngx_cpymem(q, own, own_len);
        m->len = q - m->json;
        m->mtype = 1 + NGX_HTTP_COLLAB_MT_PRESENCE;
        (void) ngx_http_collab_ws_frame(m, &n);
        m->ws[0] = 0x80 | NGX_HTTP_COLLAB_WS_OP_BINARY;

        (void) ngx_http_collab_session_queue(s, m);
        ngx_http_collab_msg_release(m);
    }

    sub = ngx_http_collab_doc_find(s, &y->doc);

    if (sub && sub->state == NGX_HTTP_COLLAB_SUB_LIVE) {
        ngx_http_collab_yjs_presence(sub, own, own_len);
        ngx_free(own);
        return;
    }

    /* before the join: the latest waits for it */

    if (y->awareness) {
        ngx_free(y->awareness);
    }

    y->awareness = own;
    y->awareness_len = own_len;
}


/*
 * The entries of the session's own clients, into own[] as an awareness
 * update (own_len 0: none).  Its own clients are those of its first
 * update; an entry of another client, out of range, or whose clock jumps
 * is dropped.  The own entries cost one message of the session's
 * awareness budget (limit_ephemeral); over it they are dropped too, their
 * clocks still noted for the null states of the end.  Every state must
 * be JSON (the others JSON.parse it; \u0000 is): else it is dropped.
 */

static ngx_int_t
ngx_http_collab_yjs_clients(ngx_http_collab_session_t *s, const u_char *data,
    size_t len, u_char *own, size_t *own_len)
{
    int                        rc;
    u_char                    *p;
    size_t                     pos, n;
    int64_t                    count;
    json_t                    *v;
    ngx_uint_t                 i, first, nown, charged, over;
    ngx_http_collab_yjs_t     *y;
    ngx_http_collab_yjs_aw_t   aw;

    y = s->yjs;
    pos = 0;
    count = -1;
    nown = 0;
    charged = 0;
    over = 0;
    first = !y->owned;
    y->owned = 1;

    /* the entries after room for the count, which is written last */
    p = own + NGX_HTTP_COLLAB_YJS_UINT_LEN;

    for ( ;; ) {
        rc = ngx_http_collab_yjs_aw_next(data, len, &pos, &count, &aw);

        if (rc < 0) {
            return NGX_ERROR;
        }

        if (rc == 0) {
            break;
        }

        if (aw.client > NGX_HTTP_COLLAB_YJS_ID_MAX
            || aw.clock > NGX_HTTP_COLLAB_YJS_CLOCK_MAX)
        {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                           "collab: awareness entry out of range dropped");
            continue;
        }

        for (i = 0; i < y->nclients; i++) {
            if (y->client[i] == aw.client) {
                break;
            }
        }

        if (i == y->nclients) {
            if (!first || i == NGX_HTTP_COLLAB_YJS_CLIENTS
                || ngx_http_collab_yjs_taken(s, aw.client))
            {
                continue;
            }

            y->nclients++;
            y->client[i] = aw.client;

        } else if (aw.clock > y->clock[i] + NGX_HTTP_COLLAB_YJS_CLOCK_JUMP) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                           "collab: awareness clock jump dropped");
            continue;
        }

        y->clock[i] = aw.clock;

        if (!charged) {
            charged = 1;
            over = (ngx_http_collab_limit_ephemeral(s, &y->aw_excess,
                                                    &y->aw_last)
                    != NGX_OK);
        }

        if (over) {
            continue;
        }

        v = json_loadb((char *) aw.state, aw.state_len,
                       JSON_DECODE_ANY|JSON_ALLOW_NUL, NULL);
        if (v == NULL) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                           "collab: awareness state not JSON dropped");
            continue;
        }

        json_decref(v);

        nown++;

        p = ngx_cpymem(p, data + aw.start, pos - aw.start);
    }

    if (nown == 0) {
        *own_len = 0;
        return NGX_OK;
    }

    n = ngx_http_collab_yjs_put_uint(own, nown);
    ngx_memmove(own + n, own + NGX_HTTP_COLLAB_YJS_UINT_LEN,
                p - own - NGX_HTTP_COLLAB_YJS_UINT_LEN);
    *own_len = p - own - NGX_HTTP_COLLAB_YJS_UINT_LEN + n;

    return NGX_OK;
}


/*
 * An awareness message of another session that names a client of this
 * one: never sent to it.  Ownership is checked in the worker only (see
 * yjs_taken); a member elsewhere that claims the id cannot make the
 * owner's client raise its clock past what the server relays, or see its
 * state replaced.
 */

static ngx_uint_t
ngx_http_collab_yjs_mine(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m)
{
    size_t                      pos;
    int64_t                     count;
    ngx_uint_t                  i;
    ngx_http_collab_yjs_t      *y;
    ngx_http_collab_yjs_aw_t    aw;
    ngx_http_collab_yjs_msg_t   msg;

    y = s->yjs;

    if (y->nclients == 0
        || ngx_http_collab_yjs_parse(m->json, m->len, &msg) != 0)
    {
        return 0;
    }

    pos = 0;
    count = -1;

    while (ngx_http_collab_yjs_aw_next(msg.data, msg.len, &pos, &count, &aw)
           == 1)
    {
        for (i = 0; i < y->nclients; i++) {
            if (y->client[i] == aw.client) {
                return 1;
            }
        }
    }

    return 0;
}


/*
 * A client id that another live session of the room in this worker owns,
 * of another user: a claim on it (the id is visible in the relayed
 * awareness) would let one member overwrite another's state.
 */

static ngx_uint_t
ngx_http_collab_yjs_taken(ngx_http_collab_session_t *s, uint64_t client)
{
    ngx_uint_t                  i;
    ngx_queue_t                *q;
    ngx_http_collab_yjs_t      *y;
    ngx_http_collab_sub_t      *sub, *other;
    ngx_http_collab_session_t  *os;

    sub = ngx_http_collab_doc_find(s, &s->yjs->doc);
    if (sub == NULL) {
        return 0;
    }

    for (q = ngx_queue_head(&sub->doc->subs);
         q != ngx_queue_sentinel(&sub->doc->subs);
         q = ngx_queue_next(q))
    {
        other = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);
        os = other->session;
        y = os->yjs;

        if (os == s || y == NULL || os->closing
            || (os->user.len == s->user.len
                && ngx_strncmp(os->user.data, s->user.data, s->user.len)
                   == 0))
        {
            continue;
        }

        for (i = 0; i < y->nclients; i++) {
            if (y->client[i] == client) {
                ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                              "collab: awareness client %uL is owned by "
                              "session %*s, dropped", client, (size_t) 16,
                              os->id);
                return 1;
            }
        }
    }

    return 0;
}


/* the awareness update as the member's presence: a JSON string, base64 */

static void
ngx_http_collab_yjs_presence(ngx_http_collab_sub_t *sub, const u_char *data,
    size_t len)
{
    ngx_str_t                   json;
    ngx_http_collab_session_t  *s;

    s = sub->session;

    if (sub->role < NGX_HTTP_COLLAB_ROLE_VIEWER) {
        return;
    }

    if (ngx_base64_encoded_length(len) + 2 > s->conf->presence_size) {
        if (!s->yjs->warned) {
            /* once a session: the provider sends it again and again */
            s->yjs->warned = 1;
            ngx_log_error(NGX_LOG_WARN, s->connection->log, 0,
                          "collab: awareness state of %uz bytes is larger "
                          "than collab_presence_size in base64, not relayed",
                          len);
        }

        return;
    }

    if (ngx_http_collab_yjs_json(s, data, len, &json) != NGX_OK) {
        return;
    }

    ngx_http_collab_presence_set(sub, &json);

    ngx_free(json.data);
}


/*
 * The session ends: its clients' awareness states are set to null with a
 * higher clock, which every client takes as "gone", before the presence
 * leave.  Into buf: the presence data, a JSON string.
 */

ngx_int_t
ngx_http_collab_yjs_leave(ngx_http_collab_session_t *s, ngx_str_t *json)
{
    u_char                 *p;
    ngx_uint_t              i;
    ngx_http_collab_yjs_t  *y;
    u_char                  buf[NGX_HTTP_COLLAB_YJS_UINT_LEN
                                + NGX_HTTP_COLLAB_YJS_CLIENTS
                                  * (2 * NGX_HTTP_COLLAB_YJS_UINT_LEN + 5)];

    y = s->yjs;

    if (y == NULL || y->nclients == 0) {
        return NGX_DECLINED;
    }

    p = buf + ngx_http_collab_yjs_put_uint(buf, y->nclients);

    for (i = 0; i < y->nclients; i++) {
        p += ngx_http_collab_yjs_put_uint(p, y->client[i]);
        p += ngx_http_collab_yjs_put_uint(p, y->clock[i] + 1);
        p += ngx_http_collab_yjs_put_uint(p, 4);
        p = ngx_cpymem(p, "null", 4);
    }

    return ngx_http_collab_yjs_json(s, buf, p - buf, json);
}


/* bytes as a JSON string of their base64, allocated */

static ngx_int_t
ngx_http_collab_yjs_json(ngx_http_collab_session_t *s, const u_char *data,
    size_t len, ngx_str_t *json)
{
    ngx_str_t  raw, b64;

    json->data = ngx_alloc(ngx_base64_encoded_length(len) + 2,
                           s->connection->log);
    if (json->data == NULL) {
        return NGX_ERROR;
    }

    raw.data = (u_char *) data;
    raw.len = len;
    b64.data = json->data + 1;
    ngx_encode_base64(&b64, &raw);
    json->data[0] = '"';
    json->data[b64.len + 1] = '"';
    json->len = b64.len + 2;

    return NGX_OK;
}


/*
 * Compaction (collab_yjs_compact): once the log holds that many updates
 * after the latest snapshot this worker knows of, an editor's client is
 * asked for all it has with a step 1 of an empty state vector.  Its client
 * applies messages in order, so the step 2 it answers with holds every
 * update queued before the step 1, up to compact_seq: stored as the
 * document's snapshot at that seq, it lets collab_log_retention trim the
 * log below it, and a joining client reads the snapshot and the tail.
 * One session of a worker asks per interval (doc->yjs_snap).
 */

static void
ngx_http_collab_yjs_compact(ngx_http_collab_session_t *s)
{
    ngx_http_collab_yjs_t  *y;
    ngx_http_collab_sub_t  *sub;

    y = s->yjs;

    if (s->conf->yjs_compact == 0 || !y->synced || y->step1s
        || y->compacting || y->storing || s->closing)
    {
        return;
    }

    sub = ngx_http_collab_doc_find(s, &y->doc);

    if (sub == NULL || sub->state != NGX_HTTP_COLLAB_SUB_LIVE
        || sub->role < NGX_HTTP_COLLAB_ROLE_EDITOR
        || sub->pos < sub->doc->yjs_snap + s->conf->yjs_compact)
    {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "collab: asking session %*s for a snapshot of \"%V\" "
                  "at seq %uL", (size_t) 16, s->id, &y->doc, sub->pos);

    sub->doc->yjs_snap = sub->pos;
    y->compact_seq = sub->pos;
    y->compacting = 1;

    ngx_http_collab_yjs_step1(s);
}


static void
ngx_http_collab_yjs_snapshot_store(ngx_http_collab_session_t *s,
    const u_char *data, size_t len)
{
    ngx_str_t               json;
    ngx_http_collab_yjs_t  *y;

    y = s->yjs;
    y->compacting = 0;

    if (ngx_http_collab_yjs_json(s, data, len, &json) != NGX_OK) {
        return;
    }

    /* its answer, even one given at once, is not for the client */
    y->storing = 1;

    (void) ngx_http_collab_store_state(s, &y->doc, y->compact_seq, &json,
                                       NGX_HTTP_COLLAB_NO_SLOT);
    ngx_free(json.data);
}


/*
 * Whether ngx_decode_base64() takes the text: base64 characters up to the
 * first '=', not one more than a multiple of 4 of them.
 */

static ngx_uint_t
ngx_http_collab_yjs_base64(const u_char *p, size_t len)
{
    size_t  i;

    for (i = 0; i < len && p[i] != '='; i++) {
        if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '+' || p[i] == '/'))
        {
            return 0;
        }
    }

    return i % 4 != 1;
}


/*
 * A binary message [type, (sub,) length, bytes]; with b64 the bytes are
 * base64 text to decode (see yjs_base64).  NULL: out of memory, or not
 * base64.
 */

static ngx_http_collab_msg_t *
ngx_http_collab_yjs_frame(u_char type, ngx_int_t sub, const u_char *data,
    size_t len, ngx_uint_t b64)
{
    u_char                 *p;
    size_t                  n, hdr;
    ngx_str_t               src, dst;
    ngx_http_collab_msg_t  *m;
    u_char                  tmp[2 + NGX_HTTP_COLLAB_YJS_UINT_LEN];

    n = b64 ? ngx_base64_decoded_length(len) : len;

    m = ngx_http_collab_msg_alloc(sizeof(tmp) + n);
    if (m == NULL) {
        return NULL;
    }

    p = m->json;

    if (b64) {
        /* decoded behind the longest header, then moved up to it */
        src.data = (u_char *) data;
        src.len = len;
        dst.data = p + sizeof(tmp);

        if (ngx_decode_base64(&dst, &src) != NGX_OK) {
            ngx_http_collab_msg_release(m);
            return NULL;
        }

        n = dst.len;
    }

    hdr = 0;
    tmp[hdr++] = type;

    if (sub >= 0) {
        tmp[hdr++] = (u_char) sub;
    }

    hdr += ngx_http_collab_yjs_put_uint(tmp + hdr, n);

    if (b64) {
        ngx_memmove(p + hdr, p + sizeof(tmp), n);

    } else {
        ngx_memcpy(p + hdr, data, n);
    }

    ngx_memcpy(p, tmp, hdr);

    m->len = hdr + n;
    m->mtype = 1 + (type == NGX_HTTP_COLLAB_YJS_AWARENESS
                    ? NGX_HTTP_COLLAB_MT_PRESENCE : NGX_HTTP_COLLAB_MT_OTHER);

    (void) ngx_http_collab_ws_frame(m, &n);
    m->ws[0] = 0x80 | NGX_HTTP_COLLAB_WS_OP_BINARY;

    return m;
}


static ngx_int_t
ngx_http_collab_yjs_queue(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m)
{
    ngx_int_t  rc;

    if (m == NULL) {
        return NGX_OK;
    }

    rc = ngx_http_collab_session_queue(s, m);
    ngx_http_collab_msg_release(m);

    return rc == NGX_ERROR ? NGX_ERROR : NGX_OK;
}


/*
 * What the session is sent, translated: a delta (its data a base64
 * string) as an update, a presence as awareness; every other message is
 * for collab.v1 clients, or ends the session with a close the client
 * understands.  A delta that is not base64 (written by a collab.v1
 * client) is not for Yjs and is skipped.  NGX_OK unless out of memory
 * (then the session is closed with 1011: it would miss an update).
 */

ngx_int_t
ngx_http_collab_yjs_send(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m)
{
    size_t                        pos;
    u_char                        type;
    ngx_http_collab_json_span_t   data;

    if (m->type.len == 5 && ngx_strncmp(m->type.data, "delta", 5) == 0) {
        type = NGX_HTTP_COLLAB_YJS_SYNC;

    } else if (m->type.len == 8
               && ngx_strncmp(m->type.data, "presence", 8) == 0)
    {
        type = NGX_HTTP_COLLAB_YJS_AWARENESS;

    } else {
        return ngx_http_collab_yjs_control(s, m);
    }

    if (m->yjs == NULL) {
        /* translated once for every Yjs session it goes to */

        if (type == NGX_HTTP_COLLAB_YJS_AWARENESS
            && (ngx_http_collab_json_scan(m->json, m->len, "yjs", 3, &data,
                                          &pos)
                != 0
                || !data.found || data.end - data.start != 4
                || ngx_strncmp(m->json + data.start, "true", 4) != 0))
        {
            /* a presence of collab.v1: not awareness a Yjs session set */
            return NGX_OK;
        }

        if (ngx_http_collab_json_scan(m->json, m->len, "data", 4, &data,
                                      &pos)
            != 0
            || !data.found || data.end - data.start < 2
            || m->json[data.start] != '"')
        {
            return NGX_OK;
        }

        if (!ngx_http_collab_yjs_base64(m->json + data.start + 1,
                                        data.end - data.start - 2))
        {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                           "collab: a delta that is not base64 skipped");
            return NGX_OK;
        }

        m->yjs = ngx_http_collab_yjs_frame(type,
                                           type == NGX_HTTP_COLLAB_YJS_SYNC
                                           ? NGX_HTTP_COLLAB_YJS_UPDATE : -1,
                                           m->json + data.start + 1,
                                           data.end - data.start - 2, 1);
        if (m->yjs == NULL) {
            /* an update the client would miss: it reads the log again */
            ngx_http_collab_session_close(s, 1011, "out of memory");
            return NGX_ERROR;
        }

        m->yjs->mtype = m->mtype ? m->mtype
                        : 1 + ngx_http_collab_metrics_type(m->type.data,
                                                           m->type.len);
    }

    if (type == NGX_HTTP_COLLAB_YJS_AWARENESS
        && ngx_http_collab_yjs_mine(s, m->yjs))
    {
        return NGX_OK;
    }

    if (ngx_http_collab_session_queue(s, m->yjs) == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (type == NGX_HTTP_COLLAB_YJS_SYNC) {
        ngx_http_collab_yjs_compact(s);
    }

    return NGX_OK;
}


/* the types of collab.v1 messages that say something to a Yjs client */

static ngx_uint_t
ngx_http_collab_yjs_wanted(ngx_http_collab_session_t *s, ngx_str_t *type)
{
    ngx_uint_t  i;

    static ngx_str_t  wanted[] = {
        ngx_string("subscribed"),
        ngx_string("presence_snapshot"),
        ngx_string("nack"),
        ngx_string("error"),
        ngx_string("resync"),
        ngx_string("unsubscribed"),
        ngx_string("role")
    };

    if (s->yjs->storing && type->len == 2
        && ngx_strncmp(type->data, "ok", 2) == 0)
    {
        return 1;
    }

    for (i = 0; i < sizeof(wanted) / sizeof(ngx_str_t); i++) {
        if (type->len == wanted[i].len
            && ngx_strncmp(type->data, wanted[i].data, type->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* the messages of collab.v1 that say something to a Yjs client */

static ngx_int_t
ngx_http_collab_yjs_control(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m)
{
    json_t      *obj, *v;
    ngx_int_t    rc;
    const char  *type, *code;

    if (m->type.len && !ngx_http_collab_yjs_wanted(s, &m->type)) {
        /* most messages: no JSON parse per Yjs session */
        return NGX_OK;
    }

    obj = json_loadb((char *) m->json, m->len, 0, NULL);
    if (obj == NULL) {
        return NGX_OK;
    }

    type = json_string_value(json_object_get(obj, "type"));
    code = json_string_value(json_object_get(obj, "code"));

    if (code == NULL) {
        code = json_string_value(json_object_get(obj, "reason"));
    }

    if (code == NULL) {
        code = "";
    }

    rc = NGX_OK;

    if (type == NULL) {
        /* not ours */

    } else if (s->yjs->storing
               && (ngx_strcmp(type, "ok") == 0
                   || ngx_strcmp(type, "error") == 0))
    {
        /* the answer to a snapshot: the log still has it all */
        s->yjs->storing = 0;

        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "collab: snapshot of \"%V\" at seq %uL: %s %s",
                      &s->yjs->doc, s->yjs->compact_seq, type, code);

    } else if (ngx_strcmp(type, "subscribed") == 0) {
        /* a snapshot of the log (compaction) is one update */
        ngx_http_collab_yjs_known(s, obj);

        v = json_object_get(json_object_get(obj, "state"), "data");
        rc = ngx_http_collab_yjs_string(s, NGX_HTTP_COLLAB_YJS_SYNC,
                                        NGX_HTTP_COLLAB_YJS_UPDATE, v);

    } else if (ngx_strcmp(type, "presence_snapshot") == 0) {
        rc = ngx_http_collab_yjs_snapshot(s, obj);

    } else if (ngx_strcmp(type, "role") == 0) {
        v = json_object_get(obj, "role");

        if (s->yjs->refused && json_is_string(v)
            && (ngx_strcmp(json_string_value(v), "editor") == 0
                || ngx_strcmp(json_string_value(v), "owner") == 0))
        {
            /*
             * Updates it makes now depend on those refused, which nobody
             * has: its step 2 after reconnecting uploads them all.
             */
            ngx_http_collab_session_close(s, 4500, "role changed");
        }

    } else if (ngx_strcmp(code, "forbidden") == 0) {
        /* a refused update, or the membership revoked */
        ngx_http_collab_yjs_denied(s);

        if (ngx_strcmp(type, "nack") != 0) {
            ngx_http_collab_session_close(s, 4403, "forbidden");
        }

    } else if (ngx_strcmp(type, "nack") == 0
               || ngx_strcmp(type, "error") == 0)
    {
        /* not stored: the client sends it again after reconnecting */
        if (ngx_strcmp(code, "rate_limited") == 0) {
            ngx_http_collab_session_close(s, 4429, "rate limited");

        } else if (ngx_strcmp(code, "unavailable") == 0) {
            ngx_http_collab_session_close(s, 1013, "try again later");

        } else {
            ngx_http_collab_session_close(s, 4500, code);
        }

    } else if (ngx_strcmp(type, "resync") == 0
               || ngx_strcmp(type, "unsubscribed") == 0)
    {
        /* the client reconnects and reads the log again */
        ngx_http_collab_session_close(s, 4500, type);
    }

    json_decref(obj);

    return rc;
}


/* the snapshot the join started from: none is asked for below it */

static void
ngx_http_collab_yjs_known(ngx_http_collab_session_t *s, json_t *obj)
{
    json_t                 *v;
    ngx_http_collab_sub_t  *sub;

    v = json_object_get(json_object_get(obj, "state"), "seq");
    sub = ngx_http_collab_doc_find(s, &s->yjs->doc);

    if (sub && json_is_number(v) && json_number_value(v) > 0
        && (uint64_t) json_number_value(v) > sub->doc->yjs_snap)
    {
        sub->doc->yjs_snap = (uint64_t) json_number_value(v);
    }
}


/* a JSON string of base64 as a message of type (and sub) */

static ngx_int_t
ngx_http_collab_yjs_string(ngx_http_collab_session_t *s, u_char type,
    ngx_int_t sub, json_t *v)
{
    ngx_http_collab_msg_t  *m;

    if (!json_is_string(v) || json_string_length(v) == 0) {
        return NGX_OK;
    }

    m = ngx_http_collab_yjs_frame(type, sub, (u_char *) json_string_value(v),
                                  json_string_length(v), 1);

    return ngx_http_collab_yjs_queue(s, m);
}


/* the latest awareness of every Yjs member: one message each */

static ngx_int_t
ngx_http_collab_yjs_snapshot(ngx_http_collab_session_t *s, json_t *obj)
{
    size_t                  i;
    json_t                 *members, *member, *v;
    const char             *sid;
    ngx_http_collab_msg_t  *m;

    members = json_object_get(obj, "members");

    for (i = 0; i < json_array_size(members); i++) {
        member = json_array_get(members, i);
        v = json_object_get(member, "data");

        if (!json_is_true(json_object_get(member, "yjs"))
            || !json_is_string(v) || json_string_length(v) == 0)
        {
            /* a collab.v1 member's presence */
            continue;
        }

        m = ngx_http_collab_yjs_frame(NGX_HTTP_COLLAB_YJS_AWARENESS, -1,
                                      (u_char *) json_string_value(v),
                                      json_string_length(v), 1);
        if (m == NULL) {
            continue;
        }

        sid = json_string_value(json_object_get(member, "session"));

        if ((sid == NULL || ngx_strlen(sid) != sizeof(s->id)
             || ngx_strncmp(sid, s->id, sizeof(s->id)) != 0)
            && ngx_http_collab_yjs_mine(s, m))
        {
            /* another's claim of a client of this session */
            ngx_http_collab_msg_release(m);
            continue;
        }

        if (ngx_http_collab_yjs_queue(s, m) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (s->yjs->query) {
        /* the queries that came while it was asked for */
        ngx_http_collab_yjs_query(s);
    }

    return NGX_OK;
}


/* an auth message: permission denied */

static void
ngx_http_collab_yjs_denied(ngx_http_collab_session_t *s)
{
    static u_char  reason[] = "permission denied";

    s->yjs->refused = 1;

    (void) ngx_http_collab_yjs_queue(s,
               ngx_http_collab_yjs_frame(NGX_HTTP_COLLAB_YJS_AUTH, 0, reason,
                                         sizeof(reason) - 1, 0));
}


/*
 * The stock client never reconnects after a close code of 4400-4499: the
 * codes of collab.v1 that a new connection can overcome (a token that
 * expired, a rate limit) move to 4500-4599, which it retries.
 */

ngx_uint_t
ngx_http_collab_yjs_close_code(ngx_uint_t code)
{
    if (code == 4401 || code == 4408 || code == 4429) {
        return code + 100;
    }

    return code;
}
