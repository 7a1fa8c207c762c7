
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


/* a log read, then not the channel's "reset": how long members wait */
#define NGX_HTTP_COLLAB_RESET_WAIT  1000


static ngx_http_collab_doc_t *ngx_http_collab_doc_get(ngx_str_t *name,
    ngx_log_t *log);
static void ngx_http_collab_doc_free(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_doc_wake(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_doc_redis_subscribe(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_doc_message(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_collab_doc_fanout(ngx_http_collab_doc_t *doc,
    u_char *payload, size_t len);
static ngx_http_collab_sub_t *ngx_http_collab_doc_sub_create(
    ngx_http_collab_session_t *s, ngx_str_t *name);
static void ngx_http_collab_doc_redis_lost(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_doc_redis_subscribed(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_doc_shard_message(ngx_http_collab_doc_t *doc,
    redisReply *kind, redisReply *reply);
static void ngx_http_collab_doc_members_lost(ngx_http_collab_doc_t *doc);
static ngx_int_t ngx_http_collab_doc_redis_leave(ngx_http_collab_doc_t *doc,
    ngx_uint_t shard);
static void ngx_http_collab_doc_unsubscribed(ngx_http_collab_doc_t *doc);
static ngx_http_collab_msg_t *ngx_http_collab_doc_shared(u_char *payload,
    size_t len);
static void ngx_http_collab_doc_deliver(ngx_http_collab_doc_t *doc,
    uint64_t seq, u_char *payload, size_t len);
static void ngx_http_collab_doc_lagging(ngx_http_collab_sub_t *sub);
static void ngx_http_collab_doc_relay(ngx_http_collab_doc_t *doc,
    ngx_http_collab_event_t *ev, u_char *payload, size_t len);
static ngx_msec_t ngx_http_collab_doc_reset_wait(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_doc_reset_later(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_doc_reset_poll(ngx_event_t *ev);
static void ngx_http_collab_doc_reset(ngx_http_collab_doc_t *doc,
    u_char *epoch);
static void ngx_http_collab_doc_read_failed(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd);
static ngx_int_t ngx_http_collab_doc_read_role(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd);
static ngx_int_t ngx_http_collab_doc_read_epoch(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd);
static ngx_int_t ngx_http_collab_doc_join(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd);
static ngx_http_collab_msg_t *ngx_http_collab_doc_snapshot(
    ngx_http_collab_sub_t *sub, ngx_http_collab_read_t *rd);
static ngx_int_t ngx_http_collab_doc_read_entries(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd, ngx_uint_t joined, size_t *used);
static void ngx_http_collab_doc_read_next(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd, ngx_uint_t joined, size_t used);
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
    ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_DOCUMENTS, 1);

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

    if (doc->reset_poll.timer_set) {
        ngx_del_timer(&doc->reset_poll);
    }

    if (doc->acl_cmd) {
        /* the ACL reply finds no document and only frees the command */
        doc->acl_cmd->doc_owner = NULL;
    }

    if (doc->acl) {
        json_decref(doc->acl);
    }

    ngx_rbtree_delete(&ngx_http_collab_worker->docs, &doc->node.node);
    ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_DOCUMENTS, -1);
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
    ngx_http_collab_doc_wake(doc);
}


static void
ngx_http_collab_doc_wake(ngx_http_collab_doc_t *doc)
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

    rc = ngx_http_collab_redis_for_doc(&doc->node.str, 1);

    if (rc->state != NGX_HTTP_COLLAB_REDIS_READY) {
        /* ngx_http_collab_doc_redis_ready() subscribes */
        return;
    }

    if (rc->nshard >= NGX_HTTP_COLLAB_SHARD_MAX) {
        /*
         * hiredis's records of S(UN)SUBSCRIBE go with the connection; not
         * dropped here, we may be inside one of its callbacks
         */
        ngx_http_collab_redis_kick_later(rc, "too many sharded subscriptions");
        return;
    }

    argv[0] = "SUBSCRIBE";
    argvlen[0] = 9;
    argv[1] = (char *) doc->channel.data;
    argvlen[1] = doc->channel.len;

    if (ngx_http_collab_redis_raw(rc, ngx_http_collab_doc_message, doc, 2,
                                  argv, argvlen)
        != NGX_OK)
    {
        return;
    }

    doc->in_redis = 1;
    doc->redis = rc;

    if (ngx_http_collab_worker->cluster) {
        /* the pushes come to the callback that SUBSCRIBE registered */

        argv[0] = "SSUBSCRIBE";
        argvlen[0] = 10;

        (void) ngx_http_collab_redis_raw(rc,
                                         ngx_http_collab_cluster_shard_reply,
                                         rc, 2, argv, argvlen);
        rc->nshard++;
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

    if (ngx_http_collab_redis_for_doc(name, 0)->state
        == NGX_HTTP_COLLAB_REDIS_DOWN
        || ngx_http_collab_redis_for_doc(name, 1)->state
           == NGX_HTTP_COLLAB_REDIS_DOWN)
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
        sub = ngx_http_collab_doc_sub_create(s, name);
        if (sub == NULL) {
            return NGX_ERROR;
        }

        doc = sub->doc;
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

    /*
     * While our UNSUBSCRIBE is in flight the channel is not subscribed
     * again: its reply ends hiredis's entry whatever was sent after it.
     * The reply subscribes again (the document has members now).
     */

    if (!doc->in_redis) {
        ngx_http_collab_doc_redis_subscribe(doc);
    }

    if (doc->subscribed) {
        ngx_http_collab_doc_sub_read(sub);

    } else {
        sub->stalled = 1;
    }

    return NGX_OK;
}


/* a new membership, of the worker's document that it creates if need be */

static ngx_http_collab_sub_t *
ngx_http_collab_doc_sub_create(ngx_http_collab_session_t *s, ngx_str_t *name)
{
    ngx_http_collab_doc_t  *doc;
    ngx_http_collab_sub_t  *sub;

    doc = ngx_http_collab_doc_get(name, s->connection->log);
    if (doc == NULL) {
        return NULL;
    }

    /* counted in the limit once its role is known: see read_role */

    sub = ngx_alloc(sizeof(ngx_http_collab_sub_t), s->connection->log);
    if (sub == NULL) {
        if (doc->nsubs == 0 && !doc->in_redis) {
            ngx_http_collab_doc_free(doc);
        }

        return NULL;
    }

    ngx_memzero(sub, sizeof(ngx_http_collab_sub_t));

    sub->doc = doc;
    sub->session = s;

    ngx_queue_insert_tail(&doc->subs, &sub->doc_link);
    doc->nsubs++;

    ngx_queue_insert_tail(&s->subs, &sub->session_link);
    s->nsubs++;

    return sub;
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

    sub->leave_reason = "revoked";

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
        sub->leave_reason = "unsubscribed";
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
    ngx_http_collab_doc_t  *doc;

    if (sub->read) {
        sub->read->sub = NULL;
        sub->read = NULL;
    }

    ngx_http_collab_presence_leave(sub);

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

    (void) ngx_http_collab_doc_redis_leave(doc, 1);
}


/*
 * UNSUBSCRIBE (after SUNSUBSCRIBE in a cluster, unless the node ended the
 * sharded subscription itself); the document stays until its reply.
 */

static ngx_int_t
ngx_http_collab_doc_redis_leave(ngx_http_collab_doc_t *doc, ngx_uint_t shard)
{
    const char               *argv[2];
    size_t                    argvlen[2];
    ngx_http_collab_redis_t  *rc;

    rc = doc->redis;

    argv[1] = (char *) doc->channel.data;
    argvlen[1] = doc->channel.len;

    if (ngx_http_collab_worker->cluster && shard) {
        /* before UNSUBSCRIBE, which ends the callback */

        argv[0] = "SUNSUBSCRIBE";
        argvlen[0] = 12;

        (void) ngx_http_collab_redis_raw(rc,
                                         ngx_http_collab_cluster_shard_reply,
                                         rc, 2, argv, argvlen);
        rc->nshard++;
    }

    argv[0] = "UNSUBSCRIBE";
    argvlen[0] = 11;

    if (ngx_http_collab_redis_raw(rc, NULL, NULL, 2, argv, argvlen)
        != NGX_OK)
    {
        /* the connection is gone: the NULL reply ends the entry */
        return NGX_ERROR;
    }

    doc->unsubscribing = 1;
    doc->subscribed = 0;

    return NGX_OK;
}


static void
ngx_http_collab_doc_message(redisAsyncContext *ac, void *r, void *data)
{
    ngx_http_collab_doc_t *doc = data;

    ngx_uint_t   cluster;
    redisReply  *reply, *kind;

    reply = r;

    if (reply == NULL) {
        ngx_http_collab_doc_redis_lost(doc);
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3
        || reply->element[0]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    kind = reply->element[0];
    cluster = (ngx_http_collab_worker->cluster != NULL);

    /* in a cluster: "smessage", "ssubscribe", "sunsubscribe" */

    if (cluster && kind->len > 1 && kind->str[0] == 's') {
        ngx_http_collab_doc_shard_message(doc, kind, reply);
        return;
    }

    if (kind->len == 7 && ngx_strncmp(kind->str, "message", 7) == 0) {
        if (reply->element[2]->type == REDIS_REPLY_STRING) {
            ngx_http_collab_doc_fanout(doc, (u_char *) reply->element[2]->str,
                                       reply->element[2]->len);
        }

        return;
    }

    if (kind->len == 9 && ngx_strncmp(kind->str, "subscribe", 9) == 0) {
        if (!cluster) {
            /* in a cluster "ssubscribe" says it */
            ngx_http_collab_doc_redis_subscribed(doc);
        }

        return;
    }

    if (kind->len == 11 && ngx_strncmp(kind->str, "unsubscribe", 11) == 0) {
        ngx_http_collab_doc_unsubscribed(doc);
    }
}


/* our UNSUBSCRIBE is confirmed: hiredis forgot the channel */

static void
ngx_http_collab_doc_unsubscribed(ngx_http_collab_doc_t *doc)
{
    ngx_uint_t  moved;

    if (!doc->unsubscribing) {
        /* not ours (cannot be: one UNSUBSCRIBE at most is in flight) */
        return;
    }

    moved = doc->moved;

    doc->unsubscribing = 0;
    doc->moved = 0;
    doc->in_redis = 0;
    doc->subscribed = 0;

    if (doc->nsubs == 0) {
        ngx_http_collab_doc_free(doc);
        return;
    }

    /* members (again): subscribe, on the new owner after a move */

    if (!moved || ngx_http_collab_worker->cluster == NULL
        || ngx_http_collab_redis_for_doc(&doc->node.str, 1) != doc->redis)
    {
        /* replica=: even where it left, if the replica flipped back */
        ngx_http_collab_doc_redis_subscribe(doc);
    }

    /* else the next map subscribes it (cluster_apply) */
}


/*
 * Sharded pub/sub.  "sunsubscribe" that we did not ask for: a reshard took
 * the slot away; the channel leaves this node and the members catch up
 * from the log once it is followed on the new owner.
 */

static void
ngx_http_collab_doc_shard_message(ngx_http_collab_doc_t *doc,
    redisReply *kind, redisReply *reply)
{
    ngx_http_collab_redis_t  *rc;

    if (kind->len == 8 && ngx_strncmp(kind->str, "smessage", 8) == 0) {
        if (reply->element[2]->type == REDIS_REPLY_STRING) {
            ngx_http_collab_doc_fanout(doc, (u_char *) reply->element[2]->str,
                                       reply->element[2]->len);
        }

        return;
    }

    if (kind->len == 10 && ngx_strncmp(kind->str, "ssubscribe", 10) == 0) {
        ngx_http_collab_doc_redis_subscribed(doc);
        return;
    }

    if (kind->len != 12 || ngx_strncmp(kind->str, "sunsubscribe", 12) != 0
        || doc->unsubscribing)
    {
        return;
    }

    rc = doc->redis;

    ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                  "collab: the slot of \"%V\" left \"%V\"", &doc->channel,
                  &rc->addr);

    ngx_http_collab_cluster_refresh();

    /* the node ended the sharded subscription: UNSUBSCRIBE only */

    if (ngx_http_collab_doc_redis_leave(doc, 0) != NGX_OK) {
        return;
    }

    doc->moved = 1;

    ngx_http_collab_doc_members_lost(doc);
}


/*
 * Cluster: the map names another primary for documents still followed on
 * their old one (a failover that the old primary, partitioned from the
 * cluster but not from us, does not know of; a MOVED to SSUBSCRIBE): they
 * leave it, their members catch up from the log, and the channels are
 * followed on the new owner once the old one confirms the unsubscribe.
 */

void
ngx_http_collab_doc_redis_follow(void)
{
    ngx_rbtree_node_t        *node, *root, *sentinel;
    ngx_http_collab_doc_t    *doc;
    ngx_http_collab_redis_t  *rc;

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

        if (!doc->in_redis || doc->unsubscribing) {
            continue;
        }

        rc = ngx_http_collab_redis_for_doc(&doc->node.str, 1);

        if (rc == doc->redis
            || (ngx_http_collab_worker->cluster && rc->node == 0))
        {
            /* the same owner, or none yet: stay */
            continue;
        }

        if (ngx_http_collab_worker->cluster) {
            ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                          "collab: the map moved \"%V\" from \"%V\" to "
                          "\"%V\"", &doc->channel, &doc->redis->addr,
                          &rc->addr);

        } else {
            /* replica=: replica.c logs the change once */
            ngx_log_debug3(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                           "collab: \"%V\" moves from \"%V\" to \"%V\"",
                           &doc->channel, &doc->redis->addr, &rc->addr);
        }

        if (ngx_http_collab_doc_redis_leave(doc, 1) != NGX_OK) {
            continue;
        }

        doc->moved = 1;

        ngx_http_collab_doc_members_lost(doc);
    }
}


/* the subscriber connection is gone: hiredis drops our entry */

static void
ngx_http_collab_doc_redis_lost(ngx_http_collab_doc_t *doc)
{
    doc->in_redis = 0;
    doc->subscribed = 0;
    doc->unsubscribing = 0;
    doc->moved = 0;

    if (doc->nsubs == 0) {
        ngx_http_collab_doc_free(doc);
        return;
    }

    ngx_http_collab_doc_members_lost(doc);
}


/* what was published meanwhile is read from the log later */

static void
ngx_http_collab_doc_members_lost(ngx_http_collab_doc_t *doc)
{
    ngx_queue_t            *q;
    ngx_http_collab_sub_t  *sub;

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

        } else {
            /*
             * Its head may be older than what the next subscription
             * shows: the reply is ignored, and the read is sent again
             * once the channel is followed (ngx_http_collab_doc_sub_read)
             */
            sub->again = 1;
        }
    }
}


/* the channel is followed: the members that waited for it read the log */

static void
ngx_http_collab_doc_redis_subscribed(ngx_http_collab_doc_t *doc)
{
    ngx_queue_t            *q;
    ngx_http_collab_sub_t  *sub;

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
}


/* a message on the document's channel, as the store decodes it */

static void
ngx_http_collab_doc_fanout(ngx_http_collab_doc_t *doc, u_char *payload,
    size_t len)
{
    ngx_http_collab_event_t  ev;

    if (ngx_http_collab_store_event(&doc->node.str, payload, len, &ev)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "collab: ignoring a message on \"%V\" that is not JSON",
                      &doc->channel);
        return;
    }

    switch (ev.type) {

    case NGX_HTTP_COLLAB_EVENT_DELTA:
        ngx_http_collab_doc_deliver(doc, ev.seq, payload, len);
        break;

    case NGX_HTTP_COLLAB_EVENT_ACL:
        ngx_http_collab_acl_changed(doc);
        break;

    case NGX_HTTP_COLLAB_EVENT_RESET:
        ngx_http_collab_doc_reset(doc, ev.epoch);
        break;

    case NGX_HTTP_COLLAB_EVENT_INTENT:

        /* none while the roles are not known */

        if (!doc->acl_stale) {
            ngx_http_collab_doc_relay(doc, &ev, payload, len);
        }

        break;

    case NGX_HTTP_COLLAB_EVENT_PRESENCE:

        if (ev.pseq > doc->presence_seq) {
            doc->presence_seq = ev.pseq;
        }

        /*
         * A leave tells no more than the snapshot did, and must not be
         * lost to an ACL reload that a revocation itself caused.
         */

        if (!doc->acl_stale || ev.left) {
            ngx_http_collab_doc_relay(doc, &ev, payload, len);
        }

        break;

    default:
        /* anything else stays server-side */
        break;
    }

    ngx_http_collab_store_event_free(&ev);
}


/* the one copy of a channel message that every member's queue shares */

static ngx_http_collab_msg_t *
ngx_http_collab_doc_shared(u_char *payload, size_t len)
{
    ngx_http_collab_msg_t  *m;

    m = ngx_http_collab_msg_alloc(len);
    if (m == NULL) {
        return NULL;
    }

    ngx_memcpy(m->json, payload, len);
    m->len = len;

    return m;
}


/* a delta to the live members that are exactly one behind it */

static void
ngx_http_collab_doc_deliver(ngx_http_collab_doc_t *doc, uint64_t seq,
    u_char *payload, size_t len)
{
    ngx_queue_t                *q, *next;
    ngx_http_collab_sub_t      *sub;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_session_t  *s;

    m = NULL;

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
            ngx_http_collab_doc_lagging(sub);
            continue;
        }

        if (seq > sub->pos + 1) {
            /* a gap: continue from the log */
            sub->state = NGX_HTTP_COLLAB_SUB_CATCHUP;
            ngx_http_collab_doc_sub_read(sub);
            continue;
        }

        if (m == NULL) {
            m = ngx_http_collab_doc_shared(payload, len);
            if (m == NULL) {
                return;
            }

            m->seq = seq;
            ngx_str_set(&m->type, "delta");
            m->epoch.data = doc->epoch;
            m->epoch.len = doc->has_epoch ? NGX_HTTP_COLLAB_EPOCH_LEN : 0;
        }

        sub->pos = seq;

        (void) ngx_http_collab_session_send(s, m);
    }

    if (m) {
        /* queued to the last local subscriber */
        ngx_http_collab_metrics_fanout(payload, len);
    }

    ngx_http_collab_msg_release(m);
}


/*
 * A reader that cannot keep up gets no more live deltas: "resync" tells it
 * to come back with since = pos, and the log serves it at its own pace.
 */

static void
ngx_http_collab_doc_lagging(ngx_http_collab_sub_t *sub)
{
    ngx_http_collab_session_t  *s;

    s = sub->session;

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "collab: session %*s fell behind on \"%V\" "
                  "at seq %uL, sending resync", (size_t) 16,
                  s->id, &sub->doc->node.str, sub->pos);

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_LAGGING);

    ngx_http_collab_doc_resync(sub, sub->pos, "lagging");

    if (!s->drain.timer_set && !s->closing) {
        /* it must read within collab_send_timeout */
        ngx_add_timer(&s->drain, s->conf->send_timeout);
    }
}


/*
 * Intents to the live members but the sender; presence to the members
 * that had their snapshot, when newer than it.  Above half the queue a
 * reader loses intents and presence updates, not leaves: a lost leave
 * would leave a ghost member on it (the hard limit still applies).
 */

static void
ngx_http_collab_doc_relay(ngx_http_collab_doc_t *doc,
    ngx_http_collab_event_t *ev, u_char *payload, size_t len)
{
    ngx_queue_t                *q, *next;
    ngx_http_collab_sub_t      *sub;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_session_t  *s;

    m = NULL;

    for (q = ngx_queue_head(&doc->subs);
         q != ngx_queue_sentinel(&doc->subs);
         q = next)
    {
        next = ngx_queue_next(q);
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);
        s = sub->session;

        /* a re-subscribe waits for its snapshot, as the first one */

        if (ev->type == NGX_HTTP_COLLAB_EVENT_PRESENCE
            && (!sub->presence_ready
                || sub->state == NGX_HTTP_COLLAB_SUB_JOINING
                || ev->pseq <= sub->presence_seq))
        {
            continue;
        }

        if ((ev->type == NGX_HTTP_COLLAB_EVENT_INTENT
             && sub->state != NGX_HTTP_COLLAB_SUB_LIVE)
            || (!ev->left && s->out_bytes + len > s->conf->send_queue / 2))
        {
            /* ephemera are the first to go when a reader is behind */
            if (sub->state == NGX_HTTP_COLLAB_SUB_LIVE) {
                ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                               "collab: ephemeral message dropped for "
                               "\"%V\"", &doc->node.str);
            }

            continue;
        }

        if (ev->session.len == sizeof(s->id)
            && ngx_memcmp(ev->session.data, s->id, sizeof(s->id)) == 0)
        {
            continue;
        }

        if (m == NULL) {
            m = ngx_http_collab_doc_shared(payload, len);
            if (m == NULL) {
                break;
            }

            if (ev->type == NGX_HTTP_COLLAB_EVENT_INTENT) {
                ngx_str_set(&m->type, "intent");

            } else {
                ngx_str_set(&m->type, "presence");
            }
        }

        (void) ngx_http_collab_session_send(s, m);
    }

    ngx_http_collab_msg_release(m);
}


/*
 * How long no member goes live on an epoch a read showed before the
 * channel's "reset": on a replica, as long as it may lag while usable.
 */

static ngx_msec_t
ngx_http_collab_doc_reset_wait(ngx_http_collab_doc_t *doc)
{
    ngx_msec_t  wait;

    wait = NGX_HTTP_COLLAB_RESET_WAIT;

    if (doc->redis == &ngx_http_collab_worker->rsub) {
        wait = ngx_max(wait, ngx_http_collab_replica_behind());
    }

    return wait;
}


/*
 * The stalled members read again in 50 ms: on the document's own timer,
 * not the worker's retry, which would also retry ACL loads before their
 * backoff.
 */

static void
ngx_http_collab_doc_reset_later(ngx_http_collab_doc_t *doc)
{
    if (doc->reset_poll.timer_set) {
        return;
    }

    doc->reset_poll.handler = ngx_http_collab_doc_reset_poll;
    doc->reset_poll.data = doc;
    doc->reset_poll.log = ngx_cycle->log;
    doc->reset_poll.cancelable = 1;

    ngx_add_timer(&doc->reset_poll, 50);
}


static void
ngx_http_collab_doc_reset_poll(ngx_event_t *ev)
{
    ngx_http_collab_doc_wake(ev->data);
}


/* the log was created anew: whoever followed the old one starts over */

static void
ngx_http_collab_doc_reset(ngx_http_collab_doc_t *doc, u_char *epoch)
{
    ngx_queue_t            *q, *next;
    ngx_http_collab_sub_t  *sub;

    if (epoch == NULL) {
        return;
    }

    if (doc->has_epoch
        && ngx_memcmp(doc->epoch, epoch, NGX_HTTP_COLLAB_EPOCH_LEN) == 0)
    {
        if (doc->reset_wait) {
            /* a read showed it first: the deltas seen so far were old */
            doc->reset_wait = 0;
            doc->unconfirmed = 0;
            doc->seq = 0;
            ngx_http_collab_doc_wake(doc);
            return;
        }

        if (!doc->unconfirmed) {
            return;
        }

        /*
         * Members went live on it after the wait, and the channel was
         * further behind: the deltas it gave them since were of the old
         * log.
         */
    }

    doc->reset_wait = 0;
    doc->unconfirmed = 0;

    ngx_memcpy(doc->epoch, epoch, NGX_HTTP_COLLAB_EPOCH_LEN);
    doc->has_epoch = 1;
    doc->epoch_gen++;
    doc->seq = 0;
    doc->yjs_snap = 0;      /* a seq of the old log */

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


void
ngx_http_collab_doc_sub_read(ngx_http_collab_sub_t *sub)
{
    ngx_http_collab_session_t  *s;

    if (sub->read) {
        return;
    }

    s = sub->session;

    if (!sub->doc->subscribed
        || ngx_http_collab_redis_for_doc(&sub->doc->node.str, 0)->state
           != NGX_HTTP_COLLAB_REDIS_READY
        || (sub->doc->acl_stale && sub->state != NGX_HTTP_COLLAB_SUB_JOINING)
        || (sub->state != NGX_HTTP_COLLAB_SUB_JOINING
            && s->out_bytes > s->conf->send_queue / 2))
    {
        sub->stalled = 1;
        return;
    }

    if (ngx_http_collab_store_read(sub) != NGX_OK) {
        /* too many commands in flight, or no memory: try again shortly */
        sub->stalled = 1;
        ngx_http_collab_doc_retry_later();
    }
}


void
ngx_http_collab_doc_retry_later(void)
{
    if (!ngx_http_collab_worker->retry.timer_set) {
        ngx_add_timer(&ngx_http_collab_worker->retry, 50);
    }
}


void
ngx_http_collab_doc_retry_handler(ngx_event_t *ev)
{
    ngx_http_collab_doc_redis_ready(&ngx_http_collab_worker->cmd);
}


/*
 * A log read came back, decoded by the store: the role and the ACL that
 * came with it, the "subscribed" answer of a join, then the entries after
 * pos; the member goes live once it has read up to the head.
 */

void
ngx_http_collab_doc_read_done(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd)
{
    size_t                  used;
    ngx_uint_t              joined, other;
    ngx_http_collab_doc_t  *d;

    if (sub->again) {
        /* subscribed again meanwhile: read from the newest point */
        sub->again = 0;
        ngx_http_collab_doc_sub_read(sub);
        return;
    }

    switch (rd->status) {

    case NGX_OK:
        break;

    case NGX_AGAIN:
        /* Redis went away: retried when it is back */
        sub->stalled = 1;
        return;

    case NGX_DECLINED:
        /* no role on the document: the same answer whether it exists */

        if (sub->state == NGX_HTTP_COLLAB_SUB_JOINING) {
            ngx_http_collab_doc_refuse(sub);

        } else {
            ngx_http_collab_doc_revoke(sub);
        }

        return;

    default:
        ngx_http_collab_doc_read_failed(sub, rd);
        return;
    }

    if (sub->epoch_gen != sub->doc->epoch_gen) {
        /*
         * The epoch changed while the read was in flight: it may have read
         * the old log, which must not bring the document back to it.
         */
        ngx_http_collab_doc_sub_read(sub);
        return;
    }

    d = sub->doc;

    other = rd->replica && d->has_epoch
            && (rd->epoch.len != NGX_HTTP_COLLAB_EPOCH_LEN
                || ngx_memcmp(d->epoch, rd->epoch.data,
                              NGX_HTTP_COLLAB_EPOCH_LEN) != 0);

    if (other || (rd->replica
                  && (d->acl_stale || sub->acl_gen != d->acl_gen)))
    {
        /*
         * The replica has not seen the log we follow yet (the primary
         * decides whether it was reset), or its ACL may be older than the
         * one loaded or announced meanwhile: never applied.
         */

        if (other && d->redis == &ngx_http_collab_worker->rsub
            && !d->reset_wait)
        {
            /*
             * The channel is on that replica: it relays the old log's
             * tail before the new log's "reset" (seen already elsewhere).
             */
            d->reset_wait = 1;
            d->unconfirmed = 1;
            d->reset_time = ngx_current_msec;
        }

        sub->primary = 1;
        ngx_http_collab_doc_sub_read(sub);
        return;
    }

    if (ngx_http_collab_doc_read_role(sub, rd) != NGX_OK
        || ngx_http_collab_doc_read_epoch(sub, rd) != NGX_OK)
    {
        return;
    }

    joined = 0;

    ngx_http_collab_metrics_observe(NGX_HTTP_COLLAB_H_REPLAY, rd->nentries);

    if (sub->state == NGX_HTTP_COLLAB_SUB_JOINING) {

        joined = rd->from_snap;

        if (ngx_http_collab_doc_join(sub, rd) != NGX_OK) {
            return;
        }

    } else if (rd->from_snap) {
        /* the entries after pos were trimmed away */
        ngx_http_collab_doc_resync(sub, rd->head, "trimmed");
        return;
    }

    if (ngx_http_collab_doc_read_entries(sub, rd, joined, &used) != NGX_OK) {
        return;
    }

    ngx_http_collab_doc_read_next(sub, rd, joined, used);
}


static void
ngx_http_collab_doc_read_failed(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd)
{
    ngx_str_t                  *doc;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_session_t  *s;

    s = sub->session;
    doc = &sub->doc->node.str;

    ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                  "collab: reading the log of \"%V\" failed: %s", doc,
                  rd->error);

    m = ngx_http_collab_msg_error("error", "internal", doc, NULL,
                                  "the document could not be read");
    ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);

    m = ngx_http_collab_msg_build("unsubscribed", "doc", 'S', doc,
                                  "reason", 'C', "internal", NULL);
    ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);

    sub->leave_reason = "dropped";
    ngx_http_collab_doc_sub_free(sub);
    ngx_http_collab_doc_dropped(s);
}


/* NGX_DONE: the membership is dropped */

static ngx_int_t
ngx_http_collab_doc_read_role(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd)
{
    ngx_int_t                   v;
    ngx_str_t                  *doc;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_session_t  *s;

    s = sub->session;
    doc = &sub->doc->node.str;

    /* a member is counted once it has a role: no one learns more */

    if (sub->state == NGX_HTTP_COLLAB_SUB_JOINING && !sub->counted) {
        v = ngx_http_collab_limit_acquire(s, doc, &sub->limit_slot);

        if (v == NGX_DECLINED) {
            ngx_http_collab_doc_drop(sub,
                ngx_http_collab_msg_error("error", "rate_limited", doc, NULL,
                                          "too many sessions on this "
                                          "document"),
                NULL);
            return NGX_DONE;
        }

        sub->counted = (v == NGX_OK);
    }

    /* the ACL came with the read: the cache of every session here */

    ngx_http_collab_acl_set(sub->doc, rd->acl.data, rd->acl.len);
    sub->doc->acl_known = 1;

    if (sub->state != NGX_HTTP_COLLAB_SUB_JOINING && rd->role != sub->role) {
        sub->role = rd->role;

        m = ngx_http_collab_msg_build("role", "doc", 'S', doc, "role", 'S',
                                      ngx_http_collab_role_name(rd->role),
                                      NULL);
        ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);
    }

    sub->role = rd->role;

    return NGX_OK;
}


/*
 * NGX_DONE: the log was recreated under the member.  Every member of the
 * old log resyncs, not only this one: the "reset" the new log published
 * may have come before the channel was subscribed again, and a member left
 * with its old position would skip the new log's first deltas.
 */

static ngx_int_t
ngx_http_collab_doc_read_epoch(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd)
{
    ngx_uint_t              joining;
    ngx_http_collab_doc_t  *d;

    d = sub->doc;

    if (rd->epoch.len != NGX_HTTP_COLLAB_EPOCH_LEN) {
        return NGX_OK;
    }

    if (!d->has_epoch) {
        ngx_memcpy(d->epoch, rd->epoch.data, rd->epoch.len);
        d->has_epoch = 1;
        d->epoch_gen++;
        return NGX_OK;
    }

    if (ngx_memcmp(d->epoch, rd->epoch.data, rd->epoch.len) == 0) {
        return NGX_OK;
    }

    /*
     * A new log that the channel did not announce yet (a replica or a
     * subscriber connection behind the reply): the members of the old one
     * resync, a joining one goes on.  Until the channel's "reset" comes
     * (or NGX_HTTP_COLLAB_RESET_WAIT passed) no member goes live: a delta
     * of the old log still on its way carries no epoch.
     */

    joining = (sub->state == NGX_HTTP_COLLAB_SUB_JOINING);

    ngx_http_collab_doc_hold(d);
    ngx_http_collab_doc_reset(d, rd->epoch.data);

    d->reset_wait = 1;
    d->unconfirmed = 1;
    d->reset_time = ngx_current_msec;

    if (ngx_http_collab_doc_release(d) == NGX_DONE || !joining) {
        /* this member resynced too (or the document is gone) */
        return NGX_DONE;
    }

    return NGX_OK;
}


/* the answer to a subscribe: from the snapshot, or from since */

static ngx_int_t
ngx_http_collab_doc_join(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd)
{
    ngx_int_t               rc;
    ngx_http_collab_msg_t  *m;

    if (rd->from_snap) {
        sub->pos = rd->snap_seq;
        m = ngx_http_collab_doc_snapshot(sub, rd);

    } else {
        sub->pos = sub->since;

        m = ngx_http_collab_msg_build("subscribed", "doc", 'S',
                                      &sub->doc->node.str, "role", 'S',
                                      ngx_http_collab_role_name(sub->role),
                                      "epoch", 'S', &rd->epoch,
                                      "seq", 'I', rd->head, NULL);
        if (m) {
            m->seq = sub->pos;
            m->epoch.data = sub->doc->epoch;
            m->epoch.len = NGX_HTTP_COLLAB_EPOCH_LEN;
        }
    }

    sub->state = NGX_HTTP_COLLAB_SUB_CATCHUP;

    if (m == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_collab_session_send(sub->session, m);

    ngx_http_collab_msg_release(m);

    if (rc == NGX_OK) {
        ngx_http_collab_presence_join(sub);
    }

    return rc;
}


/* "subscribed" with the state snapshot, the data as stored */

static ngx_http_collab_msg_t *
ngx_http_collab_doc_snapshot(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd)
{
    u_char                 *p;
    ngx_str_t              *doc, *rname;
    ngx_http_collab_msg_t  *m;

    doc = &sub->doc->node.str;
    rname = ngx_http_collab_role_name(sub->role);

    m = ngx_http_collab_msg_alloc(256 + doc->len + rname->len + rd->snap.len);
    if (m == NULL) {
        return NULL;
    }

    p = ngx_sprintf(m->json, "{\"type\":\"subscribed\","
                    "\"doc\":\"%V\",\"role\":\"%V\","
                    "\"epoch\":\"%V\",\"seq\":%L,"
                    "\"state\":{\"seq\":%L,\"data\":",
                    doc, rname, &rd->epoch, rd->head, rd->snap_seq);

    if (rd->snap.data) {
        p = ngx_cpymem(p, rd->snap.data, rd->snap.len);

    } else {
        p = ngx_cpymem(p, "null", 4);
    }

    *p++ = '}';
    *p++ = '}';

    m->len = p - m->json;
    m->seq = rd->snap_seq;
    m->epoch.data = sub->doc->epoch;
    m->epoch.len = NGX_HTTP_COLLAB_EPOCH_LEN;
    ngx_str_set(&m->type, "subscribed");

    return m;
}


/*
 * The entries that follow pos, while the send queue has room for them.
 * NGX_OK: all were taken; "used" is their cost in the read's budget.
 */

static ngx_int_t
ngx_http_collab_doc_read_entries(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd, ngx_uint_t joined, size_t *used)
{
    uint64_t                    seq;
    ngx_int_t                   rc;
    ngx_uint_t                  i;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_entry_t     e;
    ngx_http_collab_session_t  *s;

    s = sub->session;
    *used = 0;

    for (i = 0; i < rd->nentries; i++) {
        ngx_http_collab_store_read_entry(rd, i, &e);

        *used += e.cost;

        if (e.seq < 0 || (uint64_t) e.seq <= sub->pos) {
            continue;
        }

        seq = e.seq;

        if (seq != sub->pos + 1) {
            if (joined) {
                /* re-subscribing would meet the same hole */
                ngx_http_collab_doc_broken(sub);
                return NGX_DONE;
            }

            ngx_http_collab_doc_resync(sub, rd->head, "trimmed");
            return NGX_DONE;
        }

        if (s->out_bytes
            && s->out_bytes + e.data.len + e.id.len + e.user.len + 256
               > s->conf->send_queue)
        {
            /* the rest is read again from pos once the queue drained */
            sub->stalled = 1;
            return NGX_DONE;
        }

        m = ngx_http_collab_msg_delta(&sub->doc->node.str, seq, &e.id,
                                      &e.user, &e.ts, &e.data);
        if (m == NULL) {
            return NGX_ERROR;
        }

        m->epoch.data = sub->doc->epoch;
        m->epoch.len = NGX_HTTP_COLLAB_EPOCH_LEN;

        sub->pos = seq;

        rc = ngx_http_collab_session_send(s, m);

        ngx_http_collab_msg_release(m);

        if (rc != NGX_OK) {
            return rc;
        }
    }

    return NGX_OK;
}


/* after the entries: another read, a log that ends short, or live */

static void
ngx_http_collab_doc_read_next(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd, ngx_uint_t joined, size_t used)
{
    ngx_uint_t              n;
    ngx_http_collab_doc_t  *d;

    d = sub->doc;
    n = rd->nentries;

    if (n == NGX_HTTP_COLLAB_READ_BATCH || (n && used >= sub->budget)) {
        /* more to read: once the queue has room */
        sub->rereads = 0;
        ngx_http_collab_doc_sub_read(sub);
        return;
    }

    if ((uint64_t) rd->head > sub->pos) {
        /* the log ends before its head */
        if (joined) {
            ngx_http_collab_doc_broken(sub);
            return;
        }

        ngx_http_collab_doc_resync(sub, rd->head, "trimmed");
        return;
    }

    if (d->reset_wait && d->seq > sub->pos) {
        /*
         * Before the channel's "reset" its seqs are of the old log: no
         * reason to read again, nor to go live with them (as the reset
         * would, the seq seen starts again from the new log).
         */
        d->seq = sub->pos;
    }

    if (rd->replica && d->seq > sub->pos) {
        /*
         * The replica is behind what the channel announced: the primary
         * has it.  Never counted as a read that brings nothing: the
         * replica's log says nothing about whether the seq exists.
         */
        sub->primary = 1;
        ngx_http_collab_doc_sub_read(sub);
        return;
    }

    if (d->seq > sub->pos) {
        /*
         * Announced after the read was sent, and skipped by the fan-out
         * meanwhile: read on while that brings entries.  A read sent after
         * the announcement comes back with it, so a seq that reads which
         * bring nothing do not confirm is one of a log that was reset.
         */

        if (n) {
            sub->rereads = 0;
            ngx_http_collab_doc_sub_read(sub);
            return;
        }

        if (++sub->rereads <= 3) {
            ngx_http_collab_doc_sub_read(sub);
            return;
        }

        ngx_log_error(NGX_LOG_INFO, sub->session->connection->log, 0,
                      "collab: seq %uL of \"%V\" not confirmed by the log, "
                      "live at %uL", d->seq, &d->node.str, sub->pos);

        d->seq = sub->pos;
    }

    sub->rereads = 0;

    if (!d->subscribed) {
        /*
         * the channel moves (replica=, cluster): live once it is followed
         * again, after one more read (ngx_http_collab_doc_redis_subscribed)
         */
        sub->stalled = 1;
        return;
    }

    if (d->reset_wait) {
        if (ngx_current_msec - d->reset_time
            < ngx_http_collab_doc_reset_wait(d))
        {
            /* read again shortly: the channel's "reset" may come first */
            sub->stalled = 1;
            ngx_http_collab_doc_reset_later(d);
            return;
        }

        d->reset_wait = 0;
    }

    sub->state = NGX_HTTP_COLLAB_SUB_LIVE;
    sub->stalled = 0;

    if (sub->session->yjs) {
        ngx_http_collab_yjs_live(sub);
    }
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

    if (s->yjs && s->nsubs == 0) {
        /* most ends were said already (yjs_send): a client reconnects */
        ngx_http_collab_session_close(s, 4500, "document dropped");
    }
}


/* tells the client to subscribe again and drops the membership */

static void
ngx_http_collab_doc_resync(ngx_http_collab_sub_t *sub, uint64_t seq,
    const char *reason)
{
    ngx_http_collab_metrics_resync(reason);

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

    if (sub->leave_reason == NULL) {
        sub->leave_reason = "dropped";
    }

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

    if (ngx_http_collab_worker->cluster) {
        argv[0] = "SPUBLISH";
        argvlen[0] = 8;

    } else {
        argv[0] = "PUBLISH";
        argvlen[0] = 7;
    }

    argv[1] = (char *) chan;
    argvlen[1] = ngx_http_collab_key(chan, doc, "");
    argv[2] = (char *) m->json;
    argvlen[2] = m->len;

    /* ephemera are dropped quietly when Redis is away */

    return ngx_http_collab_redis_command(ngx_http_collab_redis_for_doc(doc, 0),
                                         cmd, 3, argv, argvlen);
}

