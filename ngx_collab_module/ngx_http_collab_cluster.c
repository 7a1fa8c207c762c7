
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * Redis Cluster: "collab_redis cluster:host:port,host:port,...".
 *
 * Map.  A worker keeps one more connection, to a seed (the next one after
 * a failure), on which it asks CLUSTER SLOTS at once, every second, and
 * whenever a node fails or a reply says MOVED.  The map is 16384 bytes:
 * slot -> primary (an index in a fixed table of at most 32 primaries, whose
 * connection structures live as long as the worker, as the single-Redis
 * ones do).
 *
 * Routing.  Every key of a document carries the hash tag {DOC}, so a
 * document lives on the slot CRC16(DOC) mod 16384.  Per primary a worker
 * keeps a command and a subscriber connection; ngx_http_collab_redis_for_doc()
 * picks them (the single pair outside cluster mode; the never connected
 * single pair, which answers "unavailable", for a slot without a primary).
 * A node down thus fails only its documents.
 *
 * Redirects.  In cluster mode a command keeps its formatted text while in
 * flight (bounded: max_inflight commands, 1 MB each, larger ones are not
 * resent).  MOVED updates the slot, asks for the map and resends to the
 * named primary; ASK sends ASKING and resends there.  A primary the map
 * does not name yet is connected at once and the command waits for it
 * (as TRYAGAIN does).  TRYAGAIN comes for every command of a document
 * while its slot migrates (its functions declare keys that may not exist,
 * such as its ACL, and a migrating slot serves a command only if all or
 * none of its keys are there): the command waits 25 ms and is sent again,
 * so writes to that document pause until the slot has moved.  A redirect
 * that cannot be followed (a large command, 100 redirects or 2.5 s of
 * TRYAGAIN, a primary that does not connect) and CLUSTERDOWN are answered
 * as if the node was down, "unavailable": a writer retries with the same
 * id, a reader waits for the map and reads again.
 *
 * Functions.  Each primary's command connection loads the library as any
 * command connection does; the WATCH/INCR key of that check is a key of
 * the node's own slots, collab:library:{N}.  The cluster variant of the
 * library publishes with SPUBLISH.  Each primary's command connection asks
 * collab_fence for the node's epoch fence (its replid, the replid it was
 * promoted from, its node id) and keeps its own ack=replicated WAIT (see
 * ngx_http_collab_store.c); a command redirected to another node carries
 * that node's fence.  Each map asks every node's fence again: one that
 * answers as a replica loses its command connection, so that promoted
 * again it is asked on a new one.
 *
 * Sharded pub/sub.  hiredis 0.14 does not know SSUBSCRIBE: its callback
 * table is filled by SUBSCRIBE only.  So a document's channel is followed
 * with SUBSCRIBE (which registers the callback; nothing is PUBLISHed to it
 * in a cluster) then SSUBSCRIBE, whose "ssubscribe", "smessage" and
 * "sunsubscribe" pushes hiredis hands to the same callback.  hiredis keeps
 * a small record per S(UN)SUBSCRIBE sent on a subscribed connection until
 * the connection ends: the connection is rebuilt after 65536 of them.
 * When a reshard moves the slot away, Redis sends "sunsubscribe": the
 * document leaves that node (UNSUBSCRIBE), its members catch up from the
 * log, and it subscribes on the new owner once the map names it.  A node
 * that does not know it lost the slot (cut off from the cluster) sends
 * nothing: a map, or a MOVED to SSUBSCRIBE, that names another owner
 * makes the document leave it the same way (doc_redis_follow).
 *
 * Node table.  An entry lives as long as the worker (documents and
 * commands point to its connections); one of a primary that left the map,
 * disconnected and no longer referenced, is reused for a new primary.
 * Node addresses must be IPs: CLUSTER SLOTS and MOVED name them as such.
 */


#define NGX_HTTP_COLLAB_CLUSTER_SLOTS      16384
#define NGX_HTTP_COLLAB_CLUSTER_NODES      32
#define NGX_HTTP_COLLAB_CLUSTER_PERIOD     1000
#define NGX_HTTP_COLLAB_CLUSTER_REDIRECTS  100
#define NGX_HTTP_COLLAB_CLUSTER_TRYAGAIN   25
#define NGX_HTTP_COLLAB_CLUSTER_FMT_MAX    (1024 * 1024)
#define NGX_HTTP_COLLAB_CLUSTER_LOCK       "collab:library"


typedef struct {
    ngx_http_collab_addr_t       addr;
    ngx_http_collab_redis_t      cmd;
    ngx_http_collab_redis_t      sub;
    unsigned                     used:1;         /* in the last map */
    unsigned                     seen:1;         /* in the map being read */
    unsigned                     started:1;
} ngx_http_collab_cluster_node_t;


struct ngx_http_collab_cluster_s {
    ngx_http_collab_redis_t      map;
    ngx_uint_t                   nnodes;
    unsigned                     asking:1;       /* CLUSTER SLOTS sent */
    ngx_msec_t                   asked;          /* ... at this time */
    ngx_event_t                  soon;           /* asked for a refresh */
    ngx_queue_t                  again;          /* TRYAGAIN: to resend */
    ngx_uint_t                   nagain;
    ngx_event_t                  again_ev;
    u_char                       slots[NGX_HTTP_COLLAB_CLUSTER_SLOTS];
    u_char                       next[NGX_HTTP_COLLAB_CLUSTER_SLOTS];
    ngx_http_collab_cluster_node_t  nodes[NGX_HTTP_COLLAB_CLUSTER_NODES];
};


static void ngx_http_collab_cluster_ask(ngx_http_collab_cluster_t *cl);
static void ngx_http_collab_cluster_period_handler(ngx_event_t *ev);
static void ngx_http_collab_cluster_soon_handler(ngx_event_t *ev);
static void ngx_http_collab_cluster_again_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_collab_cluster_resend(ngx_http_collab_redis_t *rc,
    ngx_http_collab_cmd_t *cmd);
static ngx_int_t ngx_http_collab_cluster_parse(u_char *p, size_t len,
    ngx_uint_t *ask, ngx_str_t *host, ngx_int_t *port);
static ngx_int_t ngx_http_collab_cluster_park(ngx_http_collab_cluster_t *cl,
    ngx_http_collab_redis_t *rc, ngx_http_collab_cmd_t *cmd);
static ngx_int_t ngx_http_collab_cluster_start(ngx_http_collab_cluster_t *cl,
    ngx_http_collab_cluster_node_t *node);
static void ngx_http_collab_cluster_slots_reply(redisAsyncContext *ac,
    void *r, void *data);
static ngx_int_t ngx_http_collab_cluster_range(ngx_http_collab_cluster_t *cl,
    redisReply *range, ngx_http_collab_redis_t *rc);
static void ngx_http_collab_cluster_apply(ngx_http_collab_cluster_t *cl);
static ngx_http_collab_cluster_node_t *ngx_http_collab_cluster_node(
    ngx_http_collab_cluster_t *cl, u_char *host, size_t len, ngx_int_t port,
    ngx_uint_t add);
static ngx_uint_t ngx_http_collab_cluster_idle(ngx_http_collab_cluster_t *cl,
    ngx_http_collab_cluster_node_t *node);
static ngx_uint_t ngx_http_collab_cluster_slot(u_char *p, size_t len);
static size_t ngx_http_collab_cluster_arg_offset(ngx_uint_t i, int argc,
    const size_t *argvlen);


ngx_int_t
ngx_http_collab_cluster_init(ngx_cycle_t *cycle,
    ngx_http_collab_main_conf_t *mcf)
{
    ngx_http_collab_cluster_t  *cl;

    cl = ngx_pcalloc(cycle->pool, sizeof(ngx_http_collab_cluster_t));
    if (cl == NULL) {
        return NGX_ERROR;
    }

    ngx_http_collab_worker->cluster = cl;

    cl->soon.handler = ngx_http_collab_cluster_soon_handler;
    cl->soon.data = cl;
    cl->soon.log = cycle->log;
    cl->soon.cancelable = 1;

    ngx_queue_init(&cl->again);

    /* not cancelable: a quitting worker answers the commands it holds */
    cl->again_ev.handler = ngx_http_collab_cluster_again_handler;
    cl->again_ev.data = cl;
    cl->again_ev.log = cycle->log;

    cl->map.cluster_map = 1;

    /* the workers spread over the seeds */
    cl->map.next_sentinel = ngx_worker;

    return ngx_http_collab_redis_init(cycle, &cl->map, mcf, 0, "cluster");
}


void
ngx_http_collab_cluster_exit(void)
{
    ngx_uint_t                       i;
    ngx_http_collab_cmd_t           *cmd;
    ngx_http_collab_cluster_t       *cl;
    ngx_http_collab_cluster_node_t  *node;

    cl = ngx_http_collab_worker->cluster;

    if (cl->soon.timer_set) {
        ngx_del_timer(&cl->soon);
    }

    if (cl->again_ev.timer_set) {
        ngx_del_timer(&cl->again_ev);
    }

    while (!ngx_queue_empty(&cl->again)) {
        cmd = ngx_queue_data(ngx_queue_head(&cl->again),
                             ngx_http_collab_cmd_t, redis_link);
        ngx_queue_remove(&cmd->redis_link);

        if (cmd->doc_owner) {
            /* an ACL load cut by the exit: the document forgets it */
            cmd->doc_owner->acl_cmd = NULL;
        }

        ngx_http_collab_cmd_free(cmd);
    }

    ngx_http_collab_redis_exit(&cl->map);

    for (i = 0; i < cl->nnodes; i++) {
        node = &cl->nodes[i];

        if (node->started) {
            ngx_http_collab_redis_exit(&node->cmd);
            ngx_http_collab_redis_exit(&node->sub);
        }
    }
}


/* the next seed to ask, or a node's own address */

ngx_int_t
ngx_http_collab_cluster_target(ngx_http_collab_redis_t *rc)
{
    ngx_http_collab_addr_t     *a;
    ngx_http_collab_cluster_t  *cl;

    cl = ngx_http_collab_worker->cluster;

    if (rc->cluster_map) {
        a = rc->mcf->cluster_seeds->elts;
        a = &a[rc->next_sentinel++ % rc->mcf->cluster_seeds->nelts];

    } else if (rc->node) {
        a = &cl->nodes[rc->node - 1].addr;

    } else {
        /* the single pair: never connected in cluster mode */
        return NGX_DECLINED;
    }

    rc->target = *a;
    rc->addr.len = rc->target.text_len;
    rc->addr.data = rc->target.text;

    return NGX_OK;
}


/* a node that left the map is not reconnected */

ngx_uint_t
ngx_http_collab_cluster_node_used(ngx_http_collab_redis_t *rc)
{
    if (rc->node == 0) {
        return 1;
    }

    return ngx_http_collab_worker->cluster->nodes[rc->node - 1].used;
}


/* connected to a seed: ask for the map now and every second */

void
ngx_http_collab_cluster_ready(ngx_http_collab_redis_t *rc)
{
    ngx_http_collab_cluster_t  *cl;

    cl = ngx_http_collab_worker->cluster;

    rc->heartbeat.handler = ngx_http_collab_cluster_period_handler;
    cl->asking = 0;

    ngx_http_collab_cluster_ask(cl);

    if (rc->setup_pending == 0) {
        ngx_http_collab_redis_setup_done(rc);
    }

    if (!rc->heartbeat.timer_set) {
        ngx_add_timer(&rc->heartbeat, NGX_HTTP_COLLAB_CLUSTER_PERIOD);
    }
}


/* asks for the map again soon (not inside a hiredis callback of it) */

void
ngx_http_collab_cluster_refresh(void)
{
    ngx_http_collab_cluster_t  *cl;

    cl = ngx_http_collab_worker->cluster;

    if (cl == NULL || cl->soon.timer_set || ngx_exiting || ngx_quit
        || ngx_terminate)
    {
        return;
    }

    ngx_add_timer(&cl->soon, 10);
}


static void
ngx_http_collab_cluster_soon_handler(ngx_event_t *ev)
{
    ngx_http_collab_cluster_ask(ev->data);
}


static void
ngx_http_collab_cluster_period_handler(ngx_event_t *ev)
{
    ngx_http_collab_redis_t    *rc;

    ngx_http_collab_cluster_t  *cl;

    rc = ev->data;
    cl = ngx_http_collab_worker->cluster;

    if (rc->ac == NULL) {
        return;
    }

    if (cl->asking && ngx_current_msec - cl->asked >= rc->mcf->redis_timeout)
    {
        /* a seed that stopped answering: the next one */
        ngx_http_collab_redis_kick(rc, "the slot map timed out");
        return;
    }

    ngx_http_collab_cluster_ask(cl);

    ngx_add_timer(ev, NGX_HTTP_COLLAB_CLUSTER_PERIOD);
}


static void
ngx_http_collab_cluster_ask(ngx_http_collab_cluster_t *cl)
{
    const char  *argv[2];
    size_t       argvlen[2];

    if (cl->asking || cl->map.ac == NULL) {
        return;
    }

    argv[0] = "CLUSTER";
    argvlen[0] = 7;
    argv[1] = "SLOTS";
    argvlen[1] = 5;

    if (ngx_http_collab_redis_raw(&cl->map,
                                  ngx_http_collab_cluster_slots_reply, cl,
                                  2, argv, argvlen)
        == NGX_OK)
    {
        cl->asking = 1;
        cl->asked = ngx_current_msec;
    }
}


/* [[start, end, [ip, port, id], replicas...], ...] */

static void
ngx_http_collab_cluster_slots_reply(redisAsyncContext *ac, void *r,
    void *data)
{
    ngx_http_collab_cluster_t *cl = data;

    size_t                    i;
    redisReply               *reply;
    ngx_http_collab_redis_t  *rc;

    rc = &cl->map;
    reply = r;
    cl->asking = 0;

    if (reply == NULL) {
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY) {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: redis node \"%V\" did not send the slot "
                      "map%s%s", &rc->addr,
                      reply->type == REDIS_REPLY_ERROR ? ": " : "",
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");

        /* the next seed is asked */
        redisAsyncDisconnect(ac);
        return;
    }

    ngx_memzero(cl->next, NGX_HTTP_COLLAB_CLUSTER_SLOTS);

    for (i = 0; i < cl->nnodes; i++) {
        cl->nodes[i].seen = 0;
    }

    for (i = 0; i < reply->elements; i++) {
        if (ngx_http_collab_cluster_range(cl, reply->element[i], rc)
            == NGX_ERROR)
        {
            ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                          "collab: redis node \"%V\" sent an invalid slot "
                          "map, the previous one is kept", &rc->addr);
            return;
        }
    }

    for (i = 0; i < cl->nnodes; i++) {
        cl->nodes[i].used = cl->nodes[i].seen;
    }

    ngx_http_collab_cluster_apply(cl);
}


/* NGX_DECLINED: a primary that cannot be used, its slots are not served */

static ngx_int_t
ngx_http_collab_cluster_range(ngx_http_collab_cluster_t *cl,
    redisReply *range, ngx_http_collab_redis_t *rc)
{
    u_char                          *host;
    size_t                           len;
    long long                        start, end, s;
    redisReply                      *primary;
    ngx_http_collab_cluster_node_t  *node;

    if (range->type != REDIS_REPLY_ARRAY || range->elements < 3
        || range->element[0]->type != REDIS_REPLY_INTEGER
        || range->element[1]->type != REDIS_REPLY_INTEGER
        || range->element[2]->type != REDIS_REPLY_ARRAY
        || range->element[2]->elements < 2
        || range->element[2]->element[0]->type != REDIS_REPLY_STRING
        || range->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
    {
        return NGX_ERROR;
    }

    start = range->element[0]->integer;
    end = range->element[1]->integer;

    if (start < 0 || end >= NGX_HTTP_COLLAB_CLUSTER_SLOTS || start > end) {
        return NGX_ERROR;
    }

    primary = range->element[2];
    host = (u_char *) primary->element[0]->str;
    len = primary->element[0]->len;

    if (len == 0) {
        /* "": the node that answered */
        host = rc->target.host;
        len = ngx_strlen(host);
    }

    node = ngx_http_collab_cluster_node(cl, host, len,
                                        primary->element[1]->integer, 1);
    if (node == NULL) {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: redis cluster primary \"%*s:%L\" skipped "
                      "(not an IP address, or more than %d primaries): "
                      "slots %L-%L not served", len, host,
                      primary->element[1]->integer,
                      NGX_HTTP_COLLAB_CLUSTER_NODES, start, end);
        return NGX_DECLINED;
    }

    node->seen = 1;

    for (s = start; s <= end; s++) {
        cl->next[s] = (u_char) (node - cl->nodes + 1);
    }

    return NGX_OK;
}


/* the new map: connections to new primaries, documents to their nodes */

static void
ngx_http_collab_cluster_apply(ngx_http_collab_cluster_t *cl)
{
    ngx_uint_t                       i, changed, owned;
    ngx_http_collab_redis_t         *sub;
    ngx_http_collab_cluster_node_t  *node;

    changed = ngx_memcmp(cl->slots, cl->next, NGX_HTTP_COLLAB_CLUSTER_SLOTS);

    ngx_memcpy(cl->slots, cl->next, NGX_HTTP_COLLAB_CLUSTER_SLOTS);

    sub = NULL;

    for (i = 0; i < cl->nnodes; i++) {
        node = &cl->nodes[i];

        if (node->started) {
            /*
             * Its fence again, in or out of the map: a replica now is
             * dropped (READONLY), a primary keeps its connection (one
             * first reached by a redirect, or one a seed's partial view
             * left out) and its replid, should that change.
             */
            ngx_http_collab_store_fence_refresh(&node->cmd);
        }

        if (!node->used) {
            continue;
        }

        if (!node->started) {
            if (ngx_http_collab_cluster_start(cl, node) != NGX_OK) {
                continue;
            }

        } else {
            /* back in the map after it was left alone */

            if (node->cmd.ac == NULL && !node->cmd.reconnect.timer_set) {
                ngx_http_collab_redis_kick(&node->cmd, "a primary again");
            }

            if (node->sub.ac == NULL && !node->sub.reconnect.timer_set) {
                ngx_http_collab_redis_kick(&node->sub, "a primary again");
            }
        }

        if (node->sub.state == NGX_HTTP_COLLAB_REDIS_READY) {
            sub = &node->sub;
        }
    }

    if (changed) {
        owned = 0;

        for (i = 0; i < NGX_HTTP_COLLAB_CLUSTER_SLOTS; i++) {
            owned += (cl->slots[i] != 0);
        }

        ngx_log_error(NGX_LOG_NOTICE, cl->map.log, 0,
                      "collab: redis cluster map from \"%V\": %ui of %d "
                      "slots served", &cl->map.addr, owned,
                      NGX_HTTP_COLLAB_CLUSTER_SLOTS);

        /* reads that waited for their node */
        ngx_http_collab_doc_redis_ready(&ngx_http_collab_worker->cmd);

        /* channels followed on a node that lost their slot */
        ngx_http_collab_doc_redis_follow();
    }

    if (sub) {
        /* documents without a channel (a node came, a slot moved) */
        ngx_http_collab_doc_redis_ready(sub);
    }
}


/* a node's command and subscriber connections, for the worker's life */

static ngx_int_t
ngx_http_collab_cluster_start(ngx_http_collab_cluster_t *cl,
    ngx_http_collab_cluster_node_t *node)
{
    node->started = 1;

    if (ngx_http_collab_redis_init((ngx_cycle_t *) ngx_cycle, &node->cmd,
                                   cl->map.mcf, 0, "command")
        != NGX_OK
        || ngx_http_collab_redis_init((ngx_cycle_t *) ngx_cycle, &node->sub,
                                      cl->map.mcf, 1, "subscriber")
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_http_collab_cluster_node_t *
ngx_http_collab_cluster_node(ngx_http_collab_cluster_t *cl, u_char *host,
    size_t len, ngx_int_t port, ngx_uint_t add)
{
    ngx_uint_t                       i;
    ngx_http_collab_cluster_node_t  *node;

    for (i = 0; i < cl->nnodes; i++) {
        node = &cl->nodes[i];

        if (node->addr.port == port && ngx_strlen(node->addr.host) == len
            && ngx_strncmp(node->addr.host, host, len) == 0)
        {
            return node;
        }
    }

    if (!add) {
        return NULL;
    }

    if (cl->nnodes < NGX_HTTP_COLLAB_CLUSTER_NODES) {
        node = &cl->nodes[cl->nnodes];

    } else {
        /* an entry of a former primary, left by every reference */

        for (i = 0; i < cl->nnodes; i++) {
            if (ngx_http_collab_cluster_idle(cl, &cl->nodes[i])) {
                break;
            }
        }

        if (i == cl->nnodes) {
            return NULL;
        }

        node = &cl->nodes[i];
    }

    if (ngx_http_collab_addr_set(&node->addr, host, len, port) != NGX_OK) {
        return NULL;
    }

    if (node == &cl->nodes[cl->nnodes]) {
        cl->nnodes++;

    } else {
        ngx_log_error(NGX_LOG_INFO, cl->map.log, 0,
                      "collab: redis cluster primary \"%*s\" replaces "
                      "\"%V\" in the node table", node->addr.text_len,
                      node->addr.text, &node->cmd.addr);

        ngx_memzero(&node->cmd, sizeof(ngx_http_collab_redis_t));
        ngx_memzero(&node->sub, sizeof(ngx_http_collab_redis_t));
        node->started = 0;
        node->used = 0;
        node->seen = 0;
    }

    node->cmd.node = node - cl->nodes + 1;
    node->sub.node = node - cl->nodes + 1;

    return node;
}


/*
 * Not in the map, disconnected, no timer, no command in flight or parked:
 * nothing points to its connections (a document's channel ended with the
 * connection, doc->redis is only read while the channel is followed).
 */

static ngx_uint_t
ngx_http_collab_cluster_idle(ngx_http_collab_cluster_t *cl,
    ngx_http_collab_cluster_node_t *node)
{
    ngx_uint_t                i;
    ngx_queue_t              *q;
    ngx_http_collab_cmd_t    *cmd;
    ngx_http_collab_redis_t  *rc;

    if (node->used || node->seen) {
        return 0;
    }

    for (i = 0; node->started && i < 2; i++) {
        rc = i ? &node->sub : &node->cmd;

        if (rc->ac || rc->ninflight || rc->reconnect.timer_set
            || rc->watchdog.timer_set || rc->heartbeat.timer_set
            || rc->kick.posted || rc->wait || !ngx_queue_empty(&rc->acks))
        {
            return 0;
        }
    }

    for (q = ngx_queue_head(&cl->again);
         q != ngx_queue_sentinel(&cl->again);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_http_collab_cmd_t, redis_link);

        if (cmd->rc == &node->cmd) {
            return 0;
        }
    }

    return 1;
}


ngx_http_collab_redis_t *
ngx_http_collab_redis_for_doc(ngx_str_t *doc, ngx_uint_t subscriber)
{
    ngx_uint_t                       i;
    ngx_http_collab_worker_t        *w;
    ngx_http_collab_cluster_node_t  *node;

    w = ngx_http_collab_worker;

    if (w->cluster == NULL) {
        if (subscriber && ngx_http_collab_replica_usable()) {
            /* replica=: channels reach it in order with the log */
            return &w->rsub;
        }

        return subscriber ? &w->sub : &w->cmd;
    }

    i = w->cluster->slots[ngx_http_collab_cluster_slot(doc->data, doc->len)];

    if (i == 0) {
        /* no primary serves the slot: never connected, "unavailable" */
        return subscriber ? &w->sub : &w->cmd;
    }

    node = &w->cluster->nodes[i - 1];

    return subscriber ? &node->sub : &node->cmd;
}


/* keeps the text of a command to send it again after a redirect */

ngx_int_t
ngx_http_collab_cluster_format(ngx_http_collab_cmd_t *cmd, int argc,
    const char **argv, const size_t *argvlen)
{
    int    n;
    char  *fmt;

    n = redisFormatCommandArgv(&fmt, argc, argv, argvlen);
    if (n < 0) {
        return NGX_ERROR;
    }

    if (cmd->fmt) {
        redisFreeCommand(cmd->fmt);
    }

    cmd->fmt = fmt;
    cmd->fmt_len = n;

    cmd->fence_len = 0;

    if (cmd->fence_arg && cmd->fence_arg < (ngx_uint_t) argc) {
        cmd->fence_off = ngx_http_collab_cluster_arg_offset(cmd->fence_arg,
                                                            argc, argvlen);
        cmd->fence_len = argvlen[cmd->fence_arg];
    }

    return NGX_OK;
}


/*
 * Where argument i starts in the text redisFormatCommandArgv() made: RESP,
 * "*argc\r\n" then "$len\r\n" arg "\r\n" for each argument (hiredis
 * formats exactly so, the protocol leaves no choice).  Only the fence is
 * overwritten there, by one of the same length (cluster_resend()).
 */

static size_t
ngx_http_collab_cluster_arg_offset(ngx_uint_t i, int argc,
    const size_t *argvlen)
{
    u_char      buf[NGX_SIZE_T_LEN + 4];
    size_t      off;
    ngx_uint_t  j;

    off = ngx_sprintf(buf, "*%d\r\n", argc) - buf;

    for (j = 0; j <= i; j++) {
        off += ngx_sprintf(buf, "$%uz\r\n", argvlen[j]) - buf;

        if (j < i) {
            off += argvlen[j] + 2;
        }
    }

    return off;
}


/* after the send: a large command is not kept (it fails on a redirect) */

void
ngx_http_collab_cluster_sent(ngx_http_collab_cmd_t *cmd)
{
    if (cmd->fmt && cmd->fmt_len > NGX_HTTP_COLLAB_CLUSTER_FMT_MAX) {
        redisFreeCommand(cmd->fmt);
        cmd->fmt = NULL;
    }
}


/* "MOVED slot host:port", "ASK slot host:port": the slot, NGX_ERROR */

static ngx_int_t
ngx_http_collab_cluster_parse(u_char *p, size_t len, ngx_uint_t *ask,
    ngx_str_t *host, ngx_int_t *port)
{
    u_char     *last, *colon, *sp;
    ngx_int_t   slot;

    last = p + len;

    if (len > 6 && ngx_strncmp(p, "MOVED ", 6) == 0) {
        *ask = 0;
        p += 6;

    } else if (len > 4 && ngx_strncmp(p, "ASK ", 4) == 0) {
        *ask = 1;
        p += 4;

    } else {
        return NGX_ERROR;
    }

    sp = ngx_strlchr(p, last, ' ');
    if (sp == NULL) {
        return NGX_ERROR;
    }

    slot = ngx_atoi(p, sp - p);
    p = sp + 1;

    for (colon = last - 1; colon > p && *colon != ':'; colon--) {
        /* void */
    }

    *port = ngx_atoi(colon + 1, last - colon - 1);

    if (slot < 0 || slot >= NGX_HTTP_COLLAB_CLUSTER_SLOTS || colon == p
        || *port <= 0 || *port > 65535)
    {
        return NGX_ERROR;
    }

    host->data = p;
    host->len = colon - p;

    return slot;
}


/*
 * MOVED slot host:port, ASK slot host:port, TRYAGAIN.  NGX_OK: sent again,
 * the reply will come to the command as if it was the first.
 */

ngx_int_t
ngx_http_collab_cluster_redirect(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    ngx_str_t                        host;
    ngx_int_t                        slot, port;
    ngx_uint_t                       ask;
    ngx_http_collab_cluster_t       *cl;
    ngx_http_collab_cluster_node_t  *node;

    cl = ngx_http_collab_worker->cluster;

    if (cl == NULL || cmd->fmt == NULL
        || cmd->redirects >= NGX_HTTP_COLLAB_CLUSTER_REDIRECTS)
    {
        return NGX_DECLINED;
    }

    if (reply->len >= 8 && ngx_strncmp(reply->str, "TRYAGAIN", 8) == 0) {
        if (cmd->redirects++ == 0) {
            ngx_log_error(NGX_LOG_INFO, cmd->rc->log, 0,
                          "collab: redis node \"%V\": TRYAGAIN, the command "
                          "waits", &cmd->rc->addr);
        }

        return ngx_http_collab_cluster_park(cl, cmd->rc, cmd);
    }

    slot = ngx_http_collab_cluster_parse((u_char *) reply->str, reply->len,
                                         &ask, &host, &port);
    if (slot == NGX_ERROR) {
        return NGX_DECLINED;
    }

    if (!ask) {
        ngx_http_collab_cluster_refresh();
    }

    node = ngx_http_collab_cluster_node(cl, host.data, host.len, port, 1);

    if (node == NULL) {
        /* the table is full or the address is not an IP: the map tells */
        ngx_http_collab_cluster_refresh();
        return NGX_DECLINED;
    }

    if (!node->started) {
        /* a primary the map does not name yet: connect to it now */
        ngx_http_collab_cluster_refresh();

        if (ngx_http_collab_cluster_start(cl, node) != NGX_OK) {
            return NGX_DECLINED;
        }

    } else if (node->cmd.ac == NULL && !node->cmd.reconnect.timer_set) {
        /* one the map left (a replica meanwhile): a primary again */
        ngx_http_collab_cluster_refresh();
        ngx_http_collab_redis_kick(&node->cmd, "a primary again");
    }

    if (!ask && node->used) {
        cl->slots[slot] = (u_char) (node - cl->nodes + 1);
    }

    ngx_log_error(NGX_LOG_INFO, cmd->rc->log, 0,
                  "collab: redis node \"%V\": %s %i, the command goes to "
                  "\"%V\"", &cmd->rc->addr, ask ? "ASK" : "MOVED", slot,
                  &node->cmd.addr);

    cmd->redirects++;
    cmd->asking = ask;

    if (node->cmd.ac && node->cmd.state != NGX_HTTP_COLLAB_REDIS_READY) {
        /* connecting: the command waits for it */
        return ngx_http_collab_cluster_park(cl, &node->cmd, cmd);
    }

    return ngx_http_collab_cluster_resend(&node->cmd, cmd);
}


/* the command is sent to rc again in 25 ms */

static ngx_int_t
ngx_http_collab_cluster_park(ngx_http_collab_cluster_t *cl,
    ngx_http_collab_redis_t *rc, ngx_http_collab_cmd_t *cmd)
{
    if (cl->nagain >= ngx_http_collab_worker->mcf->redis_max_inflight) {
        return NGX_DECLINED;
    }

    cmd->rc = rc;

    ngx_queue_insert_tail(&cl->again, &cmd->redis_link);
    cl->nagain++;

    if (!cl->again_ev.timer_set) {
        ngx_add_timer(&cl->again_ev, NGX_HTTP_COLLAB_CLUSTER_TRYAGAIN);
    }

    return NGX_OK;
}


/*
 * An error that redirects when it cannot be followed (no text kept, too
 * many redirects, an unknown or down primary) or CLUSTERDOWN: the command
 * is answered as if the link was lost ("unavailable", reads retry), and
 * the map is asked again.
 */

ngx_uint_t
ngx_http_collab_cluster_unserved(redisReply *reply)
{
    ngx_uint_t  i;

    static ngx_str_t  errors[] = {
        ngx_string("MOVED "),
        ngx_string("ASK "),
        ngx_string("TRYAGAIN"),
        ngx_string("CLUSTERDOWN")
    };

    if (ngx_http_collab_worker->cluster == NULL) {
        return 0;
    }

    for (i = 0; i < sizeof(errors) / sizeof(ngx_str_t); i++) {
        if (reply->len >= errors[i].len
            && ngx_strncmp(reply->str, errors[i].data, errors[i].len) == 0)
        {
            ngx_http_collab_cluster_refresh();
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_collab_cluster_resend(ngx_http_collab_redis_t *rc,
    ngx_http_collab_cmd_t *cmd)
{
    /* checked before ASKING, which must go right before the command */

    if (rc->ac == NULL || rc->state != NGX_HTTP_COLLAB_REDIS_READY
        || rc->ninflight >= rc->mcf->redis_max_inflight)
    {
        return NGX_DECLINED;
    }

    if (cmd->asking
        && redisAsyncCommand(rc->ac, NULL, NULL, "ASKING") != REDIS_OK)
    {
        return NGX_DECLINED;
    }

    /*
     * The epoch fence of the node that runs it: a stale map must not pass
     * a former primary's replid to the one promoted from it (see epoch_of).
     * Replids and node ids are 40 characters: the fence keeps its length.
     */

    if (cmd->fmt && cmd->fence_len && cmd->fence_len == rc->fence_len) {
        ngx_memcpy(cmd->fmt + cmd->fence_off, rc->fence, rc->fence_len);
    }

    return ngx_http_collab_redis_send(rc, cmd);
}


/* TRYAGAIN: the commands that waited go to the same node again */

static void
ngx_http_collab_cluster_again_handler(ngx_event_t *ev)
{
    ngx_queue_t                 q;
    ngx_http_collab_cmd_t      *cmd;
    ngx_http_collab_cluster_t  *cl;

    cl = ev->data;

    if (ngx_queue_empty(&cl->again)) {
        return;
    }

    ngx_queue_init(&q);
    ngx_queue_add(&q, &cl->again);
    ngx_queue_init(&cl->again);
    cl->nagain = 0;

    while (!ngx_queue_empty(&q)) {
        cmd = ngx_queue_data(ngx_queue_head(&q), ngx_http_collab_cmd_t,
                             redis_link);
        ngx_queue_remove(&cmd->redis_link);

        if (cmd->session == NULL && cmd->doc_owner == NULL && !cmd->by_name) {
            /* its owner left meanwhile */
            ngx_http_collab_cmd_free(cmd);
            continue;
        }

        if (ngx_http_collab_cluster_resend(cmd->rc, cmd) == NGX_OK) {
            continue;
        }

        if (cmd->rc->ac && cmd->rc->state != NGX_HTTP_COLLAB_REDIS_READY
            && cmd->redirects++ < NGX_HTTP_COLLAB_CLUSTER_REDIRECTS
            && ngx_http_collab_cluster_park(cl, cmd->rc, cmd) == NGX_OK)
        {
            /* a new primary still connecting */
            continue;
        }

        /* answered as if the link was lost */
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_REDIS_ERRORS);
        cmd->handler(cmd, NULL);
    }
}


/* a key of the node's own slots for the library check: collab:library:{N} */

size_t
ngx_http_collab_cluster_lock(ngx_http_collab_redis_t *rc, u_char *buf)
{
    u_char                     *p, *tag;
    ngx_uint_t                  i;
    ngx_http_collab_cluster_t  *cl;

    cl = ngx_http_collab_worker->cluster;

    p = ngx_cpymem(buf, NGX_HTTP_COLLAB_CLUSTER_LOCK,
                   sizeof(NGX_HTTP_COLLAB_CLUSTER_LOCK) - 1);

    if (cl == NULL || rc->node == 0) {
        return p - buf;
    }

    p = ngx_cpymem(p, ":{", 2);
    tag = p;

    /* a node owns thousands of slots: a few tries find one */

    for (i = 0; i < 1000000; i++) {
        p = ngx_sprintf(tag, "%ui", i);

        if (cl->slots[ngx_http_collab_cluster_slot(tag, p - tag)]
            == rc->node)
        {
            break;
        }
    }

    *p++ = '}';

    return p - buf;
}


/*
 * An SSUBSCRIBE or SUNSUBSCRIBE refused.  hiredis 0.14 never calls this
 * with an error: an error reply on a subscribed connection ends it (see
 * ngx_http_collab_cluster_moved()).  A library that hands the error to
 * the oldest such command's callback, whichever failed, would: then only
 * the reply tells.  MOVED: the slot's documents follow its owner, the
 * connection stays (a MOVED to SUNSUBSCRIBE finds its document leaving
 * already).  Anything else: the connection is rebuilt.
 */

void
ngx_http_collab_cluster_shard_reply(redisAsyncContext *ac, void *r,
    void *data)
{
    ngx_http_collab_redis_t *rc = data;

    redisReply  *reply;

    reply = r;

    if (reply == NULL || reply->type != REDIS_REPLY_ERROR) {
        return;
    }

    if (ngx_http_collab_cluster_moved(rc, reply->str) == NGX_OK) {
        ngx_http_collab_doc_redis_follow();
        return;
    }

    ngx_log_error(NGX_LOG_WARN, rc->log, 0,
                  "collab: redis %s connection to \"%V\": a sharded "
                  "subscription was refused: %s", rc->name, &rc->addr,
                  reply->str);

    /* its channels follow the new map after the reconnect */

    if (!(ac->c.flags & REDIS_DISCONNECTING)) {
        redisAsyncDisconnect(ac);
    }
}


/*
 * A subscriber connection got "MOVED slot host:port" (hiredis 0.14 ends
 * the connection on it): the slot goes to the named primary now, so the
 * channels subscribed again after the reconnect go there, not to the
 * same node again until the next map.
 */

ngx_int_t
ngx_http_collab_cluster_moved(ngx_http_collab_redis_t *rc, const char *err)
{
    ngx_str_t                        host;
    ngx_int_t                        slot, port;
    ngx_uint_t                       ask;
    ngx_http_collab_cluster_t       *cl;
    ngx_http_collab_cluster_node_t  *node;

    cl = ngx_http_collab_worker->cluster;

    if (cl == NULL || err == NULL) {
        return NGX_DECLINED;
    }

    slot = ngx_http_collab_cluster_parse((u_char *) err, ngx_strlen(err),
                                         &ask, &host, &port);
    if (slot == NGX_ERROR || ask) {
        return NGX_DECLINED;
    }

    ngx_http_collab_cluster_refresh();

    node = ngx_http_collab_cluster_node(cl, host.data, host.len, port, 0);

    if (node == NULL || !node->used) {
        /* the map will tell */
        return NGX_DECLINED;
    }

    ngx_log_error(NGX_LOG_INFO, rc->log, 0,
                  "collab: redis %s connection to \"%V\": a sharded "
                  "subscription was redirected: %s", rc->name, &rc->addr,
                  err);

    cl->slots[slot] = (u_char) (node - cl->nodes + 1);

    return NGX_OK;
}


/* CRC16-XMODEM, as Redis Cluster hashes keys; the whole id is the tag */

static ngx_uint_t
ngx_http_collab_cluster_slot(u_char *p, size_t len)
{
    uint16_t    crc;
    ngx_uint_t  i;

    crc = 0;

    while (len--) {
        crc ^= (uint16_t) (*p++ << 8);

        for (i = 0; i < 8; i++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }
    }

    return crc & (NGX_HTTP_COLLAB_CLUSTER_SLOTS - 1);
}
