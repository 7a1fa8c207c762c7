
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * Documents of a worker and the sessions subscribed to them.
 *
 * A worker holds one Redis subscription per document; the subscription's
 * callback data is the document object, which lives until Redis confirms
 * the unsubscribe (or the subscriber connection goes away).
 *
 * Every membership (sub) tracks the last seq it delivered.  A live sub
 * takes a published delta only when it is exactly pos + 1; anything else
 * sends it back to reading the log from pos, which makes replay and live
 * delivery meet with no gap and no duplicate, whatever the interleaving of
 * the two Redis connections, reconnects or a slow client.
 */


static ngx_http_collab_doc_t *ngx_http_collab_doc_get(ngx_str_t *name,
    ngx_log_t *log);
static void ngx_http_collab_doc_free(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_doc_redis_subscribe(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_doc_message(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_collab_doc_fanout(ngx_http_collab_doc_t *doc,
    u_char *payload, size_t len);
static void ngx_http_collab_doc_reset(ngx_http_collab_doc_t *doc,
    const char *epoch);
static void ngx_http_collab_doc_sub_read(ngx_http_collab_sub_t *sub);
static void ngx_http_collab_doc_dropped(ngx_http_collab_session_t *s);
static void ngx_http_collab_doc_broken(ngx_http_collab_sub_t *sub);
static void ngx_http_collab_doc_refuse(ngx_http_collab_sub_t *sub);
static void ngx_http_collab_doc_drop(ngx_http_collab_sub_t *sub,
    ngx_http_collab_msg_t *m1, ngx_http_collab_msg_t *m2);
static void ngx_http_collab_doc_resync(ngx_http_collab_sub_t *sub,
    uint64_t seq, const char *reason);


/* the worker's document, if it follows it */

ngx_http_collab_doc_t *
ngx_http_collab_doc_lookup(ngx_str_t *name)
{
    uint32_t  hash;

    hash = ngx_crc32_long(name->data, name->len);

    return (ngx_http_collab_doc_t *)
               ngx_str_rbtree_lookup(&ngx_http_collab_worker->docs, name,
                                     hash);
}


static ngx_http_collab_doc_t *
ngx_http_collab_doc_get(ngx_str_t *name, ngx_log_t *log)
{
    u_char                 *p;
    ngx_http_collab_doc_t  *doc;

    doc = ngx_http_collab_doc_lookup(name);
    if (doc) {
        return doc;
    }

    doc = ngx_alloc(sizeof(ngx_http_collab_doc_t) + 2 * name->len
                    + sizeof("collab:{}"), log);
    if (doc == NULL) {
        return NULL;
    }

    ngx_memzero(doc, sizeof(ngx_http_collab_doc_t));

    p = (u_char *) doc + sizeof(ngx_http_collab_doc_t);

    doc->node.str.data = p;
    doc->node.str.len = name->len;
    p = ngx_cpymem(p, name->data, name->len);

    doc->channel.data = p;
    doc->channel.len = ngx_http_collab_key(p, name, "");

    doc->node.node.key = ngx_crc32_long(name->data, name->len);
    ngx_rbtree_insert(&ngx_http_collab_worker->docs, &doc->node.node);

    ngx_queue_init(&doc->subs);

    return doc;
}


static void
ngx_http_collab_doc_free(ngx_http_collab_doc_t *doc)
{
    if (doc->held) {
        /* ngx_http_collab_doc_release() frees it */
        return;
    }

    if (doc->acl_retry.timer_set) {
        ngx_del_timer(&doc->acl_retry);
    }

    if (doc->acl_cmd) {
        /* the ACL reply finds no document and only frees the command */
        doc->acl_cmd->doc_owner = NULL;
    }

    if (doc->acl) {
        json_decref(doc->acl);
    }

    ngx_rbtree_delete(&ngx_http_collab_worker->docs, &doc->node.node);
    ngx_free(doc);
}


/*
 * A caller that walks the document's sessions and may drop the last of
 * them (an ACL reload) holds the document until it is done with it.
 */

void
ngx_http_collab_doc_hold(ngx_http_collab_doc_t *doc)
{
    doc->held++;
}


/* NGX_DONE: the document is gone */

ngx_int_t
ngx_http_collab_doc_release(ngx_http_collab_doc_t *doc)
{
    if (--doc->held || doc->nsubs || doc->in_redis) {
        return NGX_OK;
    }

    ngx_http_collab_doc_free(doc);

    return NGX_DONE;
}


/* the ACL is loaded again: the members held meanwhile read from pos */

void
ngx_http_collab_doc_acl_known(ngx_http_collab_doc_t *doc)
{
    ngx_queue_t            *q, *next;
    ngx_http_collab_sub_t  *sub;

    for (q = ngx_queue_head(&doc->subs);
         q != ngx_queue_sentinel(&doc->subs);
         q = next)
    {
        next = ngx_queue_next(q);
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);

        if (sub->stalled && sub->read == NULL) {
            ngx_http_collab_doc_sub_read(sub);
        }
    }
}


static void
ngx_http_collab_doc_redis_subscribe(ngx_http_collab_doc_t *doc)
{
    const char               *argv[2];
    size_t                    argvlen[2];
    ngx_http_collab_redis_t  *rc;

    rc = &ngx_http_collab_worker->sub;

    if (rc->state != NGX_HTTP_COLLAB_REDIS_READY) {
        /* ngx_http_collab_doc_redis_ready() subscribes */
        return;
    }

    argv[0] = "SUBSCRIBE";
    argvlen[0] = 9;
    argv[1] = (char *) doc->channel.data;
    argvlen[1] = doc->channel.len;

    if (ngx_http_collab_redis_raw(rc, ngx_http_collab_doc_message, doc, 2,
                                  argv, argvlen)
        == NGX_OK)
    {
        doc->in_redis = 1;
    }
}


ngx_int_t
ngx_http_collab_doc_subscribe(ngx_http_collab_session_t *s, ngx_str_t *name,
    int64_t since, ngx_str_t *epoch)
{
    ngx_http_collab_doc_t  *doc;
    ngx_http_collab_sub_t  *sub;
    ngx_http_collab_msg_t  *m;

    sub = ngx_http_collab_doc_find(s, name);

    if (sub == NULL && s->nsubs >= s->conf->max_docs) {
        m = ngx_http_collab_msg_error("error", "too_large", name, NULL,
                                      "too many documents on one session "
                                      "(the limit is %ui)",
                                      s->conf->max_docs);
        ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);
        return NGX_DECLINED;
    }

    /* a worker that is still connecting serves the subscribe when ready */

    if (ngx_http_collab_worker->cmd.state == NGX_HTTP_COLLAB_REDIS_DOWN
        || ngx_http_collab_worker->sub.state == NGX_HTTP_COLLAB_REDIS_DOWN)
    {
        m = ngx_http_collab_msg_error("error", "unavailable", name, NULL,
                                      "the document store is unavailable");
        ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);
        return NGX_DECLINED;
    }

    if (sub) {
        /*
         * A re-subscribe (after "resync"): start over from the new point.
         * A read in flight is not cut (its reply would still come), it is
         * marked stale: its reply starts the one read for the newest point.
         */

        sub->again = (sub->read != NULL);

        doc = sub->doc;

    } else {
        doc = ngx_http_collab_doc_get(name, s->connection->log);
        if (doc == NULL) {
            return NGX_ERROR;
        }

        /* counted in the limit once its role is known: see read_done */

        sub = ngx_alloc(sizeof(ngx_http_collab_sub_t), s->connection->log);
        if (sub == NULL) {
            if (doc->nsubs == 0 && !doc->in_redis) {
                ngx_http_collab_doc_free(doc);
            }

            return NGX_ERROR;
        }

        ngx_memzero(sub, sizeof(ngx_http_collab_sub_t));

        sub->doc = doc;
        sub->session = s;

        ngx_queue_insert_tail(&doc->subs, &sub->doc_link);
        doc->nsubs++;

        ngx_queue_insert_tail(&s->subs, &sub->session_link);
        s->nsubs++;
    }

    sub->state = NGX_HTTP_COLLAB_SUB_JOINING;
    sub->since = since;
    sub->pos = 0;
    sub->stalled = 0;
    sub->has_epoch = 0;

    if (epoch->len) {
        if (epoch->len == NGX_HTTP_COLLAB_EPOCH_LEN) {
            ngx_memcpy(sub->epoch, epoch->data, NGX_HTTP_COLLAB_EPOCH_LEN);

        } else {
            /* cannot be ours: the log it refers to is gone */
            ngx_memset(sub->epoch, '-', NGX_HTTP_COLLAB_EPOCH_LEN);
        }

        sub->has_epoch = 1;
    }

    if (!doc->in_redis || doc->unsubscribing) {
        doc->unsubscribing = 0;
        ngx_http_collab_doc_redis_subscribe(doc);
    }

    if (doc->subscribed) {
        ngx_http_collab_doc_sub_read(sub);

    } else {
        sub->stalled = 1;
    }

    return NGX_OK;
}


ngx_http_collab_sub_t *
ngx_http_collab_doc_find(ngx_http_collab_session_t *s, ngx_str_t *name)
{
    ngx_queue_t            *q;
    ngx_http_collab_sub_t  *sub;

    for (q = ngx_queue_head(&s->subs);
         q != ngx_queue_sentinel(&s->subs);
         q = ngx_queue_next(q))
    {
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, session_link);

        if (sub->doc->node.str.len == name->len
            && ngx_memcmp(sub->doc->node.str.data, name->data, name->len)
               == 0)
        {
            return sub;
        }
    }

    return NULL;
}


/* the role went to none while subscribed */

void
ngx_http_collab_doc_revoke(ngx_http_collab_sub_t *sub)
{
    ngx_str_t  *name;

    name = &sub->doc->node.str;

    ngx_log_error(NGX_LOG_INFO, sub->session->connection->log, 0,
                  "collab: \"%V\" lost access to \"%V\"",
                  ngx_http_collab_esc(&sub->session->user), name);

    ngx_http_collab_doc_drop(sub,
        ngx_http_collab_msg_build("unsubscribed", "doc", 'S', name,
                                  "reason", 'C', "forbidden", NULL),
        NULL);
}


/* a subscribe without a role */

static void
ngx_http_collab_doc_refuse(ngx_http_collab_sub_t *sub)
{
    ngx_http_collab_doc_drop(sub,
        ngx_http_collab_msg_error("error", "forbidden", &sub->doc->node.str,
                                  NULL, "not allowed to access this "
                                  "document"),
        NULL);
}


ngx_int_t
ngx_http_collab_doc_unsubscribe(ngx_http_collab_session_t *s,
    ngx_str_t *name)
{
    ngx_http_collab_sub_t  *sub;
    ngx_http_collab_msg_t  *m;

    sub = ngx_http_collab_doc_find(s, name);

    if (sub) {
        ngx_http_collab_doc_sub_free(sub);

        m = ngx_http_collab_msg_build("unsubscribed", "doc", 'S', name,
                                      "reason", 'C', "client", NULL);
        ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);

        return NGX_OK;
    }

    m = ngx_http_collab_msg_error("error", "invalid", name, NULL,
                                  "not subscribed to this document");
    ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);

    return NGX_DECLINED;
}


void
ngx_http_collab_doc_sub_free(ngx_http_collab_sub_t *sub)
{
    const char               *argv[2];
    size_t                    argvlen[2];
    ngx_http_collab_doc_t    *doc;
    ngx_http_collab_redis_t  *rc;

    if (sub->read) {
        sub->read->sub = NULL;
        sub->read = NULL;
    }

    doc = sub->doc;

    if (sub->counted) {
        ngx_http_collab_limit_release(sub->limit_slot);
    }

    ngx_queue_remove(&sub->doc_link);
    doc->nsubs--;

    ngx_queue_remove(&sub->session_link);
    sub->session->nsubs--;

    ngx_free(sub);

    if (doc->nsubs) {
        return;
    }

    if (!doc->in_redis) {
        ngx_http_collab_doc_free(doc);
        return;
    }

    if (doc->unsubscribing) {
        return;
    }

    rc = &ngx_http_collab_worker->sub;

    argv[0] = "UNSUBSCRIBE";
    argvlen[0] = 11;
    argv[1] = (char *) doc->channel.data;
    argvlen[1] = doc->channel.len;

    if (ngx_http_collab_redis_raw(rc, NULL, NULL, 2, argv, argvlen)
        == NGX_OK)
    {
        doc->unsubscribing = 1;
        doc->subscribed = 0;
    }
}


static void
ngx_http_collab_doc_message(redisAsyncContext *ac, void *r, void *data)
{
    ngx_http_collab_doc_t *doc = data;

    redisReply             *reply, *kind;
    ngx_queue_t            *q;
    ngx_http_collab_sub_t  *sub;

    reply = r;

    if (reply == NULL) {
        /* the subscriber connection is gone: hiredis drops our entry */

        doc->in_redis = 0;
        doc->subscribed = 0;
        doc->unsubscribing = 0;

        if (doc->nsubs == 0) {
            ngx_http_collab_doc_free(doc);
            return;
        }

        /* what was published meanwhile is read from the log later */

        for (q = ngx_queue_head(&doc->subs);
             q != ngx_queue_sentinel(&doc->subs);
             q = ngx_queue_next(q))
        {
            sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);

            if (sub->state == NGX_HTTP_COLLAB_SUB_LIVE) {
                sub->state = NGX_HTTP_COLLAB_SUB_CATCHUP;
            }

            if (sub->read == NULL) {
                sub->stalled = 1;
            }
        }

        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3
        || reply->element[0]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    kind = reply->element[0];

    if (kind->len == 7 && ngx_strncmp(kind->str, "message", 7) == 0) {
        if (reply->element[2]->type == REDIS_REPLY_STRING) {
            ngx_http_collab_doc_fanout(doc, (u_char *) reply->element[2]->str,
                                       reply->element[2]->len);
        }

        return;
    }

    if (kind->len == 9 && ngx_strncmp(kind->str, "subscribe", 9) == 0) {

        if (doc->unsubscribing) {
            return;
        }

        doc->subscribed = 1;

        for (q = ngx_queue_head(&doc->subs);
             q != ngx_queue_sentinel(&doc->subs);
             q = ngx_queue_next(q))
        {
            sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);

            if (sub->stalled) {
                ngx_http_collab_doc_sub_read(sub);
            }
        }

        return;
    }

    if (kind->len == 11 && ngx_strncmp(kind->str, "unsubscribe", 11) == 0) {

        if (!doc->unsubscribing) {
            /* a subscribe was sent after this unsubscribe: wait for it */
            return;
        }

        doc->unsubscribing = 0;
        doc->in_redis = 0;

        if (doc->nsubs == 0) {
            ngx_http_collab_doc_free(doc);
        }

        return;
    }
}


static void
ngx_http_collab_doc_fanout(ngx_http_collab_doc_t *doc, u_char *payload,
    size_t len)
{
    uint64_t                    seq;
    ngx_str_t                   sid;
    ngx_queue_t                *q, *next;
    json_t                     *obj;
    const char                 *type;
    ngx_http_collab_sub_t      *sub;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_session_t  *s;

    m = NULL;

    if (ngx_http_collab_msg_parse_delta(payload, len, &doc->node.str, &seq)
        == NGX_OK)
    {
        if (seq > doc->seq) {
            doc->seq = seq;
        }

        for (q = ngx_queue_head(&doc->subs);
             q != ngx_queue_sentinel(&doc->subs);
             q = next)
        {
            next = ngx_queue_next(q);
            sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);
            s = sub->session;

            if (sub->state != NGX_HTTP_COLLAB_SUB_LIVE || seq <= sub->pos) {
                continue;
            }

            if (doc->acl_stale) {
                /*
                 * The ACL changed and is not loaded yet: the role is not
                 * known, so nothing is delivered; the log serves it from
                 * pos once the ACL is back (ngx_http_collab_doc_acl_known).
                 */
                sub->state = NGX_HTTP_COLLAB_SUB_CATCHUP;
                sub->stalled = 1;
                continue;
            }

            if (s->out_bytes + len > s->conf->send_queue) {
                /*
                 * A reader that cannot keep up gets no more live deltas:
                 * "resync" tells it to come back with since = pos, and the
                 * log serves it at its own pace.
                 */
                ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                              "collab: session %*s fell behind on \"%V\" "
                              "at seq %uL, sending resync", (size_t) 16,
                              s->id, &doc->node.str, sub->pos);

                ngx_http_collab_doc_resync(sub, sub->pos, "lagging");

                if (!s->drain.timer_set && !s->closing) {
                    /* it must read within collab_send_timeout */
                    ngx_add_timer(&s->drain, s->conf->send_timeout);
                }

                continue;
            }

            if (seq > sub->pos + 1) {
                /* a gap: continue from the log */
                sub->state = NGX_HTTP_COLLAB_SUB_CATCHUP;
                ngx_http_collab_doc_sub_read(sub);
                continue;
            }

            if (m == NULL) {
                m = ngx_http_collab_msg_alloc(len);
                if (m == NULL) {
                    return;
                }

                ngx_memcpy(m->json, payload, len);
                m->len = len;
                m->seq = seq;
                ngx_str_set(&m->type, "delta");
                m->epoch.data = doc->epoch;
                m->epoch.len = doc->has_epoch ? NGX_HTTP_COLLAB_EPOCH_LEN : 0;
            }

            sub->pos = seq;

            (void) ngx_http_collab_session_send(s, m);
        }

        ngx_http_collab_msg_release(m);
        return;
    }

    /* ephemera and control messages */

    /* relayed ephemera keep integers of any size (see proto_handle) */
    obj = json_loadb((char *) payload, len, JSON_DECODE_INT_AS_REAL, NULL);
    if (obj == NULL) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "collab: ignoring a message on \"%V\" that is not JSON",
                      &doc->channel);
        return;
    }

    type = json_string_value(json_object_get(obj, "type"));

    if (type && ngx_strcmp(type, "acl") == 0) {
        json_decref(obj);
        ngx_http_collab_acl_changed(doc);
        return;
    }

    if (type && ngx_strcmp(type, "reset") == 0) {
        ngx_http_collab_doc_reset(doc,
                          json_string_value(json_object_get(obj, "epoch")));
        json_decref(obj);
        return;
    }

    if (type == NULL || doc->acl_stale
        || (ngx_strcmp(type, "intent") != 0
            && ngx_strcmp(type, "presence") != 0))
    {
        /*
         * Only ephemera are relayed, anything else stays server-side; and
         * none while the roles are not known.
         */
        json_decref(obj);
        return;
    }

    sid.data = (u_char *) json_string_value(json_object_get(obj, "session"));
    sid.len = sid.data ? ngx_strlen(sid.data) : 0;

    for (q = ngx_queue_head(&doc->subs);
         q != ngx_queue_sentinel(&doc->subs);
         q = next)
    {
        next = ngx_queue_next(q);
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);
        s = sub->session;

        if (sub->state != NGX_HTTP_COLLAB_SUB_LIVE
            || s->out_bytes + len > s->conf->send_queue / 2)
        {
            /* ephemera are the first to go when a reader is behind */
            if (sub->state == NGX_HTTP_COLLAB_SUB_LIVE) {
                ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                               "collab: ephemeral message dropped for "
                               "\"%V\"", &doc->node.str);
            }

            continue;
        }

        if (sid.len == sizeof(s->id)
            && ngx_memcmp(sid.data, s->id, sizeof(s->id)) == 0)
        {
            continue;
        }

        if (m == NULL) {
            m = ngx_http_collab_msg_alloc(len);
            if (m == NULL) {
                break;
            }

            ngx_memcpy(m->json, payload, len);
            m->len = len;

            if (type[0] == 'i') {
                ngx_str_set(&m->type, "intent");

            } else {
                ngx_str_set(&m->type, "presence");
            }
        }

        (void) ngx_http_collab_session_send(s, m);
    }

    ngx_http_collab_msg_release(m);
    json_decref(obj);
}


/* the log was created anew: whoever followed the old one starts over */

static void
ngx_http_collab_doc_reset(ngx_http_collab_doc_t *doc, const char *epoch)
{
    ngx_queue_t            *q, *next;
    ngx_http_collab_sub_t  *sub;

    if (epoch == NULL || ngx_strlen(epoch) != NGX_HTTP_COLLAB_EPOCH_LEN) {
        return;
    }

    if (doc->has_epoch
        && ngx_memcmp(doc->epoch, epoch, NGX_HTTP_COLLAB_EPOCH_LEN) == 0)
    {
        return;
    }

    ngx_memcpy(doc->epoch, epoch, NGX_HTTP_COLLAB_EPOCH_LEN);
    doc->has_epoch = 1;
    doc->seq = 0;

    for (q = ngx_queue_head(&doc->subs);
         q != ngx_queue_sentinel(&doc->subs);
         q = next)
    {
        next = ngx_queue_next(q);
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);

        if (sub->state != NGX_HTTP_COLLAB_SUB_JOINING) {
            ngx_http_collab_doc_resync(sub, 0, "epoch");
        }
    }
}


static void
ngx_http_collab_doc_sub_read(ngx_http_collab_sub_t *sub)
{
    ngx_http_collab_session_t  *s;

    if (sub->read) {
        return;
    }

    s = sub->session;

    if (!sub->doc->subscribed
        || ngx_http_collab_worker->cmd.state != NGX_HTTP_COLLAB_REDIS_READY
        || (sub->doc->acl_stale && sub->state != NGX_HTTP_COLLAB_SUB_JOINING)
        || (sub->state != NGX_HTTP_COLLAB_SUB_JOINING
            && s->out_bytes > s->conf->send_queue / 2))
    {
        sub->stalled = 1;
        return;
    }

    if (ngx_http_collab_store_read(sub) == NGX_DECLINED) {
        /* too many commands in flight: try again shortly */
        if (!ngx_http_collab_worker->retry.timer_set) {
            ngx_add_timer(&ngx_http_collab_worker->retry, 50);
        }
    }
}


void
ngx_http_collab_doc_retry_handler(ngx_event_t *ev)
{
    ngx_http_collab_doc_redis_ready(&ngx_http_collab_worker->cmd);
}


/*
 * The reply of collab_read: epoch, head, mode, snapshot seq, snapshot data,
 * then (seq, id, user, ts, data) per entry.
 */

void
ngx_http_collab_doc_read_done(ngx_http_collab_sub_t *sub, redisReply *reply)
{
    u_char                     *p;
    size_t                      i, n, used;
    int64_t                     head, mode, snap_seq;
    ngx_str_t                  *rname;
    ngx_uint_t                  joined, role;
    uint64_t                    seq;
    ngx_str_t                   epoch, snap, id, user, ts, data, *doc;
    ngx_int_t                   v;
    redisReply                **e;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_doc_t      *d;
    ngx_http_collab_session_t  *s;

    s = sub->session;
    d = sub->doc;
    doc = &d->node.str;

    if (sub->again) {
        /* subscribed again meanwhile: read from the newest point */
        sub->again = 0;
        ngx_http_collab_doc_sub_read(sub);
        return;
    }

    if (reply == NULL) {
        /* Redis went away: retried when it is back */
        sub->stalled = 1;
        return;
    }

    e = reply->element;

    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1
        && e[0]->type == REDIS_REPLY_INTEGER && e[0]->integer == -2)
    {
        /* no role on the document: the same answer whether it exists */

        if (sub->state == NGX_HTTP_COLLAB_SUB_JOINING) {
            ngx_http_collab_doc_refuse(sub);

        } else {
            ngx_http_collab_doc_revoke(sub);
        }

        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 7
        || (reply->elements - 7) % 5 != 0
        || e[0]->type != REDIS_REPLY_STRING
        || e[1]->type != REDIS_REPLY_INTEGER
        || e[2]->type != REDIS_REPLY_INTEGER
        || e[3]->type != REDIS_REPLY_INTEGER
        || e[5]->type != REDIS_REPLY_INTEGER)
    {
        ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                      "collab: reading the log of \"%V\" failed: %s", doc,
                      reply->type == REDIS_REPLY_ERROR
                      ? reply->str : "unexpected reply");

        m = ngx_http_collab_msg_error("error", "internal", doc, NULL,
                                      "the document could not be read");
        ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);

        m = ngx_http_collab_msg_build("unsubscribed", "doc", 'S', doc,
                                      "reason", 'C', "internal", NULL);
        ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);

        ngx_http_collab_doc_sub_free(sub);
        ngx_http_collab_doc_dropped(s);
        return;
    }

    /* a member is counted once it has a role: no one learns more */

    if (sub->state == NGX_HTTP_COLLAB_SUB_JOINING && !sub->counted) {
        v = ngx_http_collab_limit_acquire(s, doc, &sub->limit_slot);

        if (v == NGX_DECLINED) {
            ngx_http_collab_doc_drop(sub,
                ngx_http_collab_msg_error("error", "rate_limited", doc, NULL,
                                          "too many sessions on this "
                                          "document"),
                NULL);
            return;
        }

        sub->counted = (v == NGX_OK);
    }

    /* the ACL came with the read: the cache of every session here */

    if (e[6]->type == REDIS_REPLY_STRING) {
        ngx_http_collab_acl_set(d, (u_char *) e[6]->str, e[6]->len);

    } else {
        ngx_http_collab_acl_set(d, NULL, 0);
    }

    d->acl_known = 1;

    role = (ngx_uint_t) e[5]->integer;

    if (sub->state != NGX_HTTP_COLLAB_SUB_JOINING && role != sub->role) {
        sub->role = role;

        m = ngx_http_collab_msg_build("role", "doc", 'S', doc, "role", 'S',
                                      ngx_http_collab_role_name(role), NULL);
        ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);
    }

    sub->role = role;
    rname = ngx_http_collab_role_name(role);

    epoch.data = (u_char *) e[0]->str;
    epoch.len = e[0]->len;
    head = e[1]->integer;
    mode = e[2]->integer;
    snap_seq = e[3]->integer;

    if (epoch.len == NGX_HTTP_COLLAB_EPOCH_LEN) {
        if (d->has_epoch && sub->state != NGX_HTTP_COLLAB_SUB_JOINING
            && ngx_memcmp(d->epoch, epoch.data, epoch.len) != 0)
        {
            /* the log was recreated under us */
            ngx_memcpy(d->epoch, epoch.data, epoch.len);
            ngx_http_collab_doc_resync(sub, head, "epoch");
            return;
        }

        ngx_memcpy(d->epoch, epoch.data, epoch.len);
        d->has_epoch = 1;
    }

    joined = 0;

    if (sub->state == NGX_HTTP_COLLAB_SUB_JOINING) {

        joined = (mode == 1);

        if (mode == 1) {
            sub->pos = snap_seq;

            snap.data = (u_char *) e[4]->str;
            snap.len = e[4]->len;

            m = ngx_http_collab_msg_alloc(256 + doc->len + rname->len
                                          + snap.len);
            if (m) {
                p = ngx_sprintf(m->json, "{\"type\":\"subscribed\","
                                "\"doc\":\"%V\",\"role\":\"%V\","
                                "\"epoch\":\"%V\",\"seq\":%L,"
                                "\"state\":{\"seq\":%L,\"data\":",
                                doc, rname, &epoch, head, snap_seq);

                if (e[4]->type == REDIS_REPLY_STRING) {
                    p = ngx_cpymem(p, snap.data, snap.len);

                } else {
                    p = ngx_cpymem(p, "null", 4);
                }

                *p++ = '}';
                *p++ = '}';

                m->len = p - m->json;
                m->seq = snap_seq;
                m->epoch.data = d->epoch;
                m->epoch.len = NGX_HTTP_COLLAB_EPOCH_LEN;
                ngx_str_set(&m->type, "subscribed");
            }

        } else {
            sub->pos = sub->since;

            m = ngx_http_collab_msg_build("subscribed", "doc", 'S', doc,
                                          "role", 'S', rname,
                                          "epoch", 'S', &epoch,
                                          "seq", 'I', head, NULL);
            if (m) {
                m->seq = sub->pos;
                m->epoch.data = d->epoch;
                m->epoch.len = NGX_HTTP_COLLAB_EPOCH_LEN;
            }
        }

        sub->state = NGX_HTTP_COLLAB_SUB_CATCHUP;

        if (m == NULL || ngx_http_collab_session_send(s, m) != NGX_OK) {
            ngx_http_collab_msg_release(m);
            return;
        }

        ngx_http_collab_msg_release(m);

    } else if (mode == 1) {
        /* the entries after pos were trimmed away */
        ngx_http_collab_doc_resync(sub, head, "trimmed");
        return;
    }

    n = (reply->elements - 7) / 5;
    used = 0;

    for (i = 0; i < n; i++) {
        e = &reply->element[7 + i * 5];

        /* as collab_read counts its byte budget */
        used += e[4]->len + e[1]->len + e[2]->len + 64;

        if (e[0]->type != REDIS_REPLY_STRING) {
            continue;
        }

        v = ngx_atoi((u_char *) e[0]->str, e[0]->len);
        if (v == NGX_ERROR) {
            continue;
        }

        seq = v;

        if (seq <= sub->pos) {
            continue;
        }

        if (seq != sub->pos + 1) {
            if (joined) {
                /* re-subscribing would meet the same hole */
                ngx_http_collab_doc_broken(sub);
                return;
            }

            ngx_http_collab_doc_resync(sub, head, "trimmed");
            return;
        }

        if (s->out_bytes
            && s->out_bytes + e[4]->len + e[1]->len + e[2]->len + 256
               > s->conf->send_queue)
        {
            /* the rest is read again from pos once the queue drained */
            sub->stalled = 1;
            return;
        }

        id.data = (u_char *) e[1]->str;
        id.len = e[1]->len;
        user.data = (u_char *) e[2]->str;
        user.len = e[2]->len;
        ts.data = (u_char *) e[3]->str;
        ts.len = e[3]->len;
        data.data = (u_char *) e[4]->str;
        data.len = e[4]->len;

        m = ngx_http_collab_msg_delta(doc, seq, &id, &user, &ts, &data);
        if (m == NULL) {
            return;
        }

        m->epoch.data = d->epoch;
        m->epoch.len = NGX_HTTP_COLLAB_EPOCH_LEN;

        sub->pos = seq;

        if (ngx_http_collab_session_send(s, m) != NGX_OK) {
            ngx_http_collab_msg_release(m);
            return;
        }

        ngx_http_collab_msg_release(m);
    }

    if (n == NGX_HTTP_COLLAB_READ_BATCH || (n && used >= sub->budget)) {
        /* more to read: once the queue has room */
        sub->rereads = 0;
        ngx_http_collab_doc_sub_read(sub);
        return;
    }

    if ((uint64_t) head > sub->pos) {
        /* the log ends before its head */
        if (joined) {
            ngx_http_collab_doc_broken(sub);
            return;
        }

        ngx_http_collab_doc_resync(sub, head, "trimmed");
        return;
    }

    if (d->seq > sub->pos) {
        /*
         * Published after the read: read once more.  A seq that the log
         * does not confirm after a few reads is not believed.
         */

        if (++sub->rereads <= 3) {
            ngx_http_collab_doc_sub_read(sub);
            return;
        }

        d->seq = sub->pos;
    }

    sub->rereads = 0;
    sub->state = NGX_HTTP_COLLAB_SUB_LIVE;
    sub->stalled = 0;
}


/* the log does not continue from the snapshot: nothing can be served */

static void
ngx_http_collab_doc_broken(ngx_http_collab_sub_t *sub)
{
    ngx_str_t  *name;

    name = &sub->doc->node.str;

    ngx_log_error(NGX_LOG_ERR, sub->session->connection->log, 0,
                  "collab: the log of \"%V\" was trimmed past its last "
                  "state snapshot", name);

    ngx_http_collab_doc_drop(sub,
        ngx_http_collab_msg_error("error", "internal", name, NULL,
                                  "the document log was trimmed past its "
                                  "last state snapshot"),
        ngx_http_collab_msg_build("unsubscribed", "doc", 'S', name,
                                  "reason", 'C', "internal", NULL));
}


/* an event stream carries one document: without it, the stream ends */

static void
ngx_http_collab_doc_dropped(ngx_http_collab_session_t *s)
{
    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_SSE && s->nsubs == 0) {
        ngx_http_collab_session_close(s, 0, "document dropped");
    }
}


/* tells the client to subscribe again and drops the membership */

static void
ngx_http_collab_doc_resync(ngx_http_collab_sub_t *sub, uint64_t seq,
    const char *reason)
{
    ngx_http_collab_doc_drop(sub,
        ngx_http_collab_msg_build("resync", "doc", 'S', &sub->doc->node.str,
                                  "seq", 'I', (int64_t) seq,
                                  "reason", 'C', reason, NULL),
        NULL);
}


/*
 * Ends a membership with a message or two to the client; they are built
 * by the caller while the document's name is still at hand.
 */

static void
ngx_http_collab_doc_drop(ngx_http_collab_sub_t *sub, ngx_http_collab_msg_t *m1,
    ngx_http_collab_msg_t *m2)
{
    ngx_http_collab_session_t  *s;

    s = sub->session;

    ngx_http_collab_doc_sub_free(sub);

    ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m1);
    ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m2);

    ngx_http_collab_doc_dropped(s);
}


/* a session drained its send queue: stalled readers go on */

void
ngx_http_collab_doc_resume(ngx_http_collab_session_t *s)
{
    ngx_queue_t            *q, *next;
    ngx_http_collab_sub_t  *sub;

    for (q = ngx_queue_head(&s->subs);
         q != ngx_queue_sentinel(&s->subs);
         q = next)
    {
        next = ngx_queue_next(q);
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, session_link);

        if (sub->stalled && sub->read == NULL) {
            ngx_http_collab_doc_sub_read(sub);
        }
    }
}


void
ngx_http_collab_doc_redis_ready(ngx_http_collab_redis_t *rc)
{
    ngx_queue_t            *q, *next;
    ngx_rbtree_node_t      *node, *root, *sentinel;
    ngx_http_collab_doc_t  *doc;
    ngx_http_collab_sub_t  *sub;

    root = ngx_http_collab_worker->docs.root;
    sentinel = ngx_http_collab_worker->docs.sentinel;

    if (root == sentinel) {
        return;
    }

    for (node = ngx_rbtree_min(root, sentinel);
         node;
         node = ngx_rbtree_next(&ngx_http_collab_worker->docs, node))
    {
        doc = (ngx_http_collab_doc_t *) node;

        if (rc->subscriber) {
            if (!doc->in_redis && doc->nsubs) {
                ngx_http_collab_doc_redis_subscribe(doc);
            }

            continue;
        }

        if (doc->acl_stale && doc->acl_cmd == NULL) {
            /* a reload that failed: now rather than at its retry timer */
            ngx_http_collab_acl_changed(doc);
        }

        for (q = ngx_queue_head(&doc->subs);
             q != ngx_queue_sentinel(&doc->subs);
             q = next)
        {
            next = ngx_queue_next(q);
            sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);

            if (sub->stalled && sub->read == NULL) {
                ngx_http_collab_doc_sub_read(sub);
            }
        }
    }
}


/* publishes an ephemeral message on the document's channel */

ngx_int_t
ngx_http_collab_doc_publish(ngx_http_collab_session_t *s, ngx_str_t *doc,
    ngx_http_collab_msg_t *m)
{
    u_char                  chan[NGX_HTTP_COLLAB_KEY_MAX];
    const char             *argv[3];
    size_t                  argvlen[3];
    ngx_http_collab_cmd_t  *cmd;

    cmd = ngx_http_collab_cmd_alloc(s, 0);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_cmd_discard;

    argv[0] = "PUBLISH";
    argvlen[0] = 7;
    argv[1] = (char *) chan;
    argvlen[1] = ngx_http_collab_key(chan, doc, "");
    argv[2] = (char *) m->json;
    argvlen[2] = m->len;

    /* ephemera are dropped quietly when Redis is away */

    return ngx_http_collab_redis_command(&ngx_http_collab_worker->cmd, cmd,
                                         3, argv, argvlen);
}

