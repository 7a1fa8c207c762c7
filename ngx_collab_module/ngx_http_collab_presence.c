
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * Presence: what a member shows the others of a document, kept in Redis
 * (see the presence functions of the store) so that a subscriber on any
 * instance gets a snapshot, and expiring by itself when the nginx that
 * refreshed it dies.
 *
 * A member's presence is coalesced: the latest value waits in the
 * membership and the session's one timer sends it at collab_presence_rate,
 * so a flood costs one FCALL per interval and nothing queues behind an
 * older value.  The leave is decided by Redis (whoever deletes the entry
 * publishes it), so it is published once whichever way the member goes.
 */


static void ngx_http_collab_presence_schedule(ngx_http_collab_sub_t *sub);
static void ngx_http_collab_presence_flush(ngx_http_collab_session_t *s);
static int ngx_libc_cdecl ngx_http_collab_presence_sid_cmp(const void *one,
    const void *two);
static ngx_int_t ngx_http_collab_presence_send(ngx_http_collab_sub_t *sub);
static ngx_int_t ngx_http_collab_presence_store(ngx_http_collab_session_t *s,
    ngx_http_collab_session_t *owner, ngx_str_t *doc, u_char *data,
    size_t len);
static void ngx_http_collab_presence_final(ngx_http_collab_sub_t *sub);
static void ngx_http_collab_presence_ask(ngx_http_collab_sub_t *sub);
static ngx_http_collab_msg_t *ngx_http_collab_presence_build(
    ngx_http_collab_session_t *s, ngx_str_t *doc,
    ngx_http_collab_presence_list_t *pl);
static void ngx_http_collab_presence_refresh_handler(ngx_event_t *ev);
static void ngx_http_collab_presence_refresh_doc(ngx_http_collab_doc_t *doc);


static ngx_msec_t
ngx_http_collab_presence_interval(ngx_http_collab_session_t *s)
{
    return 1000 / ngx_max(s->conf->presence_rate, 1);
}


/* the member's latest value replaces any that was not sent yet */

void
ngx_http_collab_presence_set(ngx_http_collab_sub_t *sub, ngx_str_t *data)
{
    ngx_http_collab_session_t  *s;

    s = sub->session;

    if (sub->presence == NULL) {
        sub->presence = ngx_alloc(s->conf->presence_size,
                                  s->connection->log);
        if (sub->presence == NULL) {
            return;
        }
    }

    sub->presence_len = ngx_min(data->len, s->conf->presence_size);
    ngx_memcpy(sub->presence, data->data, sub->presence_len);

    ngx_http_collab_presence_schedule(sub);
}


/* the membership's value goes out now, or with the session's timer */

static void
ngx_http_collab_presence_schedule(ngx_http_collab_sub_t *sub)
{
    ngx_msec_t                  interval, elapsed;
    ngx_http_collab_session_t  *s;

    s = sub->session;
    sub->presence_pending = 1;

    interval = ngx_http_collab_presence_interval(s);

    if (s->presence.handler == NULL) {
        s->presence.handler = ngx_http_collab_presence_handler;
        s->presence.data = s;
        s->presence.log = s->connection->log;
        s->presence.cancelable = 1;
        s->presence_last = ngx_current_msec - interval;
    }

    if (s->presence.timer_set) {
        /* the timer sends it */
        return;
    }

    elapsed = ngx_current_msec - s->presence_last;

    if (elapsed >= interval) {
        ngx_http_collab_presence_flush(s);
        return;
    }

    ngx_add_timer(&s->presence, interval - elapsed);
}


void
ngx_http_collab_presence_handler(ngx_event_t *ev)
{
    ngx_http_collab_session_t  *s;

    s = ev->data;

    if (!s->closing) {
        ngx_http_collab_presence_flush(s);
    }
}


/* every membership's latest value; one that Redis refused waits a turn */

static void
ngx_http_collab_presence_flush(ngx_http_collab_session_t *s)
{
    ngx_uint_t              again;
    ngx_queue_t            *q;
    ngx_http_collab_sub_t  *sub;

    s->presence_last = ngx_current_msec;
    again = 0;

    for (q = ngx_queue_head(&s->subs);
         q != ngx_queue_sentinel(&s->subs);
         q = ngx_queue_next(q))
    {
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, session_link);

        if (sub->presence_pending
            && ngx_http_collab_presence_send(sub) == NGX_BUSY)
        {
            again = 1;
        }
    }

    if (again && !s->presence.timer_set) {
        ngx_add_timer(&s->presence, ngx_http_collab_presence_interval(s));
    }
}


/*
 * The entry as Redis keeps it: {"session":..,"user":..,"data":..}, with
 * "yjs":true before "data" when a y-websocket session wrote it.
 */

static ngx_int_t
ngx_http_collab_presence_send(ngx_http_collab_sub_t *sub)
{
    ngx_int_t                   rc;
    ngx_http_collab_session_t  *s;

    s = sub->session;

    rc = ngx_http_collab_presence_store(s, s, &sub->doc->node.str,
                                        sub->presence, sub->presence_len);

    if (rc == NGX_BUSY) {
        /* the session has its share of Redis in flight */
        return NGX_BUSY;
    }

    /* Redis away: the value is dropped, as every ephemeral message */

    sub->presence_pending = 0;

    if (rc == NGX_OK) {
        sub->presence_stored = 1;
    }

    return rc;
}


/* owner: the session whose command it is, NULL for the worker's */

static ngx_int_t
ngx_http_collab_presence_store(ngx_http_collab_session_t *s,
    ngx_http_collab_session_t *owner, ngx_str_t *doc, u_char *data,
    size_t len)
{
    u_char     *p;
    ngx_int_t   rc;
    ngx_str_t   entry;

    entry.len = sizeof("{\"session\":\"\",\"user\":\"\",\"yjs\":true,"
                       "\"data\":}") - 1
                + sizeof(s->id) + s->user.len
                + ngx_escape_json(NULL, s->user.data, s->user.len) + len;

    entry.data = ngx_alloc(entry.len, s->connection->log);
    if (entry.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(entry.data, "{\"session\":\"", 12);
    p = ngx_cpymem(p, s->id, sizeof(s->id));
    p = ngx_cpymem(p, "\",\"user\":\"", 10);
    p = (u_char *) ngx_escape_json(p, s->user.data, s->user.len);
    p = ngx_cpymem(p, "\",", 2);

    if (s->yjs) {
        /* awareness checked by yjs.c: only such data is sent to Yjs */
        p = ngx_cpymem(p, "\"yjs\":true,", 11);
    }

    p = ngx_cpymem(p, "\"data\":", 7);
    p = ngx_cpymem(p, data, len);
    *p++ = '}';

    entry.len = p - entry.data;

    rc = ngx_http_collab_store_presence(owner, s->id, doc, &entry);

    ngx_free(entry.data);

    return rc;
}


/* the membership ends: its entry goes, and whoever deletes it says so */

void
ngx_http_collab_presence_leave(ngx_http_collab_sub_t *sub)
{
    if (sub->presence) {
        ngx_free(sub->presence);
        sub->presence = NULL;
    }

    if (!sub->presence_stored) {
        return;
    }

    if (sub->session->yjs) {
        ngx_http_collab_presence_final(sub);
    }

    sub->presence_stored = 0;

    (void) ngx_http_collab_store_presence_leave(&sub->doc->node.str,
                                                sub->session->id,
                                                sub->leave_reason
                                                ? sub->leave_reason
                                                : "closed");
}


/*
 * A Yjs client's last presence: its awareness states set to null, which
 * the others apply before the leave (commands go out in order).  The
 * worker's command: the session is going.
 */

static void
ngx_http_collab_presence_final(ngx_http_collab_sub_t *sub)
{
    ngx_str_t  data;

    if (ngx_http_collab_yjs_leave(sub->session, &data) != NGX_OK) {
        return;
    }

    (void) ngx_http_collab_presence_store(sub->session, NULL,
                                          &sub->doc->node.str, data.data,
                                          data.len);
    ngx_free(data.data);
}


/*
 * Redis has no entry for these live members (it restarted without its
 * data, or was away longer than collab_presence_ttl): each sends the value
 * it holds again, so the others see it again and its leave is published.
 */

void
ngx_http_collab_presence_lost(ngx_str_t *name, u_char **sids, ngx_uint_t n)
{
    u_char                 *sid;
    ngx_queue_t            *q;
    ngx_http_collab_doc_t  *doc;
    ngx_http_collab_sub_t  *sub;

    doc = ngx_http_collab_doc_lookup(name);
    if (doc == NULL || n == 0) {
        return;
    }

    ngx_qsort(sids, n, sizeof(u_char *), ngx_http_collab_presence_sid_cmp);

    for (q = ngx_queue_head(&doc->subs);
         q != ngx_queue_sentinel(&doc->subs);
         q = ngx_queue_next(q))
    {
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);

        if (!sub->presence_stored || sub->presence == NULL
            || sub->presence_pending || sub->session->closing)
        {
            continue;
        }

        sid = sub->session->id;

        if (bsearch(&sid, sids, n, sizeof(u_char *),
                    ngx_http_collab_presence_sid_cmp)
            == NULL)
        {
            continue;
        }

        ngx_log_error(NGX_LOG_INFO, sub->session->connection->log, 0,
                      "collab: presence of session %*s on \"%V\" lost by "
                      "Redis, set again", (size_t) 16, sub->session->id,
                      name);

        ngx_http_collab_presence_schedule(sub);
    }
}


static int ngx_libc_cdecl
ngx_http_collab_presence_sid_cmp(const void *one, const void *two)
{
    return ngx_memcmp(*(u_char **) one, *(u_char **) two, 16);
}


/*
 * "subscribed" was sent: the snapshot follows.  Until it comes the member
 * gets no presence messages; those that came meanwhile are in it, or it
 * is asked again (see presence_snapshot).
 */

void
ngx_http_collab_presence_join(ngx_http_collab_sub_t *sub)
{
    sub->presence_ready = 0;
    sub->presence_tries = 0;
    sub->presence_gen++;

    ngx_http_collab_presence_ask(sub);
}


static void
ngx_http_collab_presence_ask(ngx_http_collab_sub_t *sub)
{
    ngx_http_collab_session_t  *s;

    s = sub->session;

    if (ngx_http_collab_store_presence_list(s, &sub->doc->node.str,
                                            s->conf->presence_max,
                                            sub->presence_gen)
        != NGX_OK)
    {
        /* no snapshot: what changes from now on still comes */
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "collab: no presence snapshot of \"%V\" for "
                      "session %*s", &sub->doc->node.str, (size_t) 16,
                      s->id);

        sub->presence_ready = 1;
        sub->presence_seq = sub->doc->presence_seq;
    }
}


void
ngx_http_collab_presence_snapshot(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_uint_t gen, ngx_http_collab_presence_list_t *pl)
{
    ngx_http_collab_sub_t  *sub;
    ngx_http_collab_msg_t  *m;

    sub = ngx_http_collab_doc_find(s, doc);

    if (sub == NULL || sub->presence_gen != gen
        || sub->state == NGX_HTTP_COLLAB_SUB_JOINING)
    {
        /* gone, or subscribed again: another snapshot is on its way */
        return;
    }

    if (pl->status != NGX_OK) {
        sub->presence_ready = 1;
        sub->presence_seq = sub->doc->presence_seq;
        return;
    }

    if (sub->doc->presence_seq > pl->pseq && sub->presence_tries < 3) {
        /* a change came live before the reply and was held back */
        sub->presence_tries++;
        ngx_http_collab_presence_ask(sub);
        return;
    }

    sub->presence_ready = 1;
    sub->presence_seq = pl->pseq;

    /* also when empty: the client replaces its view, after a resync too */

    m = ngx_http_collab_presence_build(s, doc, pl);
    if (m == NULL) {
        return;
    }

    (void) ngx_http_collab_session_send(s, m);

    ngx_http_collab_msg_release(m);
}


/*
 * {"type":"presence_snapshot","doc":..,"pseq":..,"count":N,
 *  "truncated":B,"members":[entry,...]}: at most collab_presence_max
 * entries (Redis picks them) and half the send queue.
 */

static ngx_http_collab_msg_t *
ngx_http_collab_presence_build(ngx_http_collab_session_t *s, ngx_str_t *doc,
    ngx_http_collab_presence_list_t *pl)
{
    u_char                 *p;
    size_t                  len, budget;
    ngx_uint_t              i, n;
    ngx_http_collab_msg_t  *m;

    budget = s->conf->send_queue / 2;
    len = sizeof("{\"type\":\"presence_snapshot\",\"doc\":\"\",\"pseq\":,"
                 "\"count\":,\"truncated\":false,\"members\":[]}")
          + doc->len + 2 * NGX_INT64_LEN;

    for (n = 0; n < pl->nentries; n++) {
        if (len + pl->entries[n]->len + 1 > budget) {
            break;
        }

        len += pl->entries[n]->len + 1;
    }

    m = ngx_http_collab_msg_alloc(len);
    if (m == NULL) {
        return NULL;
    }

    p = ngx_sprintf(m->json, "{\"type\":\"presence_snapshot\",\"doc\":\"%V\","
                    "\"pseq\":%uL,\"count\":%ui,\"truncated\":%s,"
                    "\"members\":[", doc, pl->pseq, ngx_max(pl->count, n),
                    n < pl->count ? "true" : "false");

    for (i = 0; i < n; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, pl->entries[i]->str, pl->entries[i]->len);
    }

    *p++ = ']';
    *p++ = '}';

    m->len = p - m->json;
    ngx_str_set(&m->type, "presence_snapshot");

    return m;
}


/*
 * The worker refreshes the entries of its live members and, for every
 * document it follows, lets Redis prune the entries nobody refreshes: the
 * leave of a dead instance's members reaches the others within
 * collab_presence_ttl and one refresh interval.  Redis names the members
 * it has no entry of: see presence_lost.
 */

void
ngx_http_collab_presence_init(ngx_cycle_t *cycle)
{
    ngx_event_t  *ev;

    ev = &ngx_http_collab_worker->presence_refresh;

    ev->handler = ngx_http_collab_presence_refresh_handler;
    ev->data = ngx_http_collab_worker;
    ev->log = cycle->log;
    ev->cancelable = 1;

    ngx_add_timer(ev, ngx_max(ngx_http_collab_worker->mcf->presence_ttl / 3,
                              100));
}


void
ngx_http_collab_presence_exit(void)
{
    if (ngx_http_collab_worker->presence_refresh.timer_set) {
        ngx_del_timer(&ngx_http_collab_worker->presence_refresh);
    }
}


static void
ngx_http_collab_presence_refresh_handler(ngx_event_t *ev)
{
    ngx_rbtree_node_t         *node, *root, *sentinel;
    ngx_http_collab_worker_t  *w;

    w = ngx_http_collab_worker;

    root = w->docs.root;
    sentinel = w->docs.sentinel;

    /* in a cluster each document's command says if its node is there */

    if (root != sentinel
        && (w->cluster || w->cmd.state == NGX_HTTP_COLLAB_REDIS_READY))
    {
        for (node = ngx_rbtree_min(root, sentinel);
             node;
             node = ngx_rbtree_next(&w->docs, node))
        {
            ngx_http_collab_presence_refresh_doc(
                                           (ngx_http_collab_doc_t *) node);
        }
    }

    if (!ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_add_timer(ev, ngx_max(w->mcf->presence_ttl / 3, 100));
    }
}


static void
ngx_http_collab_presence_refresh_doc(ngx_http_collab_doc_t *doc)
{
    ngx_uint_t              n;
    ngx_str_t              *sids;
    ngx_queue_t            *q;
    ngx_http_collab_sub_t  *sub;

    if (doc->nsubs == 0) {
        return;
    }

    sids = ngx_alloc(doc->nsubs * sizeof(ngx_str_t), ngx_cycle->log);
    if (sids == NULL) {
        return;
    }

    n = 0;

    for (q = ngx_queue_head(&doc->subs);
         q != ngx_queue_sentinel(&doc->subs);
         q = ngx_queue_next(q))
    {
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);

        if (sub->presence_stored) {
            sids[n].data = sub->session->id;
            sids[n].len = sizeof(sub->session->id);
            n++;
        }
    }

    /* with no entry of its own it still prunes for its subscribers */

    (void) ngx_http_collab_store_presence_refresh(&doc->node.str, sids, n);

    ngx_free(sids);
}
