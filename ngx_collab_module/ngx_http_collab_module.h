
/*
 * Copyright (C) ngx_collab_module authors
 */


#ifndef _NGX_HTTP_COLLAB_MODULE_H_INCLUDED_
#define _NGX_HTTP_COLLAB_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <jansson.h>

#include "ngx_http_collab_wsparse.h"
#include "ngx_http_collab_json.h"
#include "ngx_http_collab_cursor.h"
#include "ngx_http_collab_yjsparse.h"


#define NGX_HTTP_COLLAB_DOC_MAX           128
#define NGX_HTTP_COLLAB_OPID_MAX          128
#define NGX_HTTP_COLLAB_EPOCH_LEN         16
#define NGX_HTTP_COLLAB_CLIENT_MIN        16
#define NGX_HTTP_COLLAB_CLIENT_MAX        64
#define NGX_HTTP_COLLAB_READ_BATCH        256

/*
 * The epoch fence, collab_fence's reply: a replid (Sentinel), or in a
 * cluster "REPLID,REPLID2,NODE-ID", three 40-character ids and two commas
 * (122); a longer reply is refused as unexpected.
 */
#define NGX_HTTP_COLLAB_FENCE_MAX         128

/*
 * What a message costs in the session's collab_rate message bucket, in
 * deltas: a subscribe starts a log read, a state stores a snapshot, an auth
 * checks a signature.  Every message also costs its bytes.
 */
#define NGX_HTTP_COLLAB_COST_DELTA        1   /* intent, presence, other */
#define NGX_HTTP_COLLAB_COST_SUBSCRIBE    4
#define NGX_HTTP_COLLAB_COST_STATE        4
#define NGX_HTTP_COLLAB_COST_AUTH         10

/* retry_after_ms for a session over its share of the Redis pipeline */
#define NGX_HTTP_COLLAB_BUSY_RETRY        100
/*
 * How long a closing session waits for the peer's close frame, or for its
 * queue to move, in ms; a queue that keeps moving extends the wait up to
 * NGX_HTTP_COLLAB_LINGER_MAX from the close.
 */
#define NGX_HTTP_COLLAB_LINGER            2000
#define NGX_HTTP_COLLAB_LINGER_MAX        10000
/* "collab:{" doc "}" suffix: the longest suffix is ":audit:limit" */
#define NGX_HTTP_COLLAB_KEY_MAX                                              \
    (sizeof("collab:{}:audit:limit") + NGX_HTTP_COLLAB_DOC_MAX)
#define NGX_HTTP_COLLAB_NO_SLOT           ((ngx_uint_t) -1)

/* room in front of every outbound message for a WebSocket frame header */
#define NGX_HTTP_COLLAB_WS_HEADROOM       10

#define NGX_HTTP_COLLAB_TRANSPORT_WS      1
#define NGX_HTTP_COLLAB_TRANSPORT_SSE     2
#define NGX_HTTP_COLLAB_TRANSPORT_POST    3
#define NGX_HTTP_COLLAB_TRANSPORT_ADMIN   4   /* POST without a token */
#define NGX_HTTP_COLLAB_TRANSPORT_GET     5   /* an HTTP read */

/* an HTTP read's page: at most so many deltas, and about so many bytes */
#define NGX_HTTP_COLLAB_GET_LIMIT         100
#define NGX_HTTP_COLLAB_GET_BUDGET        (256 * 1024)

#define NGX_HTTP_COLLAB_AUTH_OFF          0
#define NGX_HTTP_COLLAB_AUTH_JWT          1
#define NGX_HTTP_COLLAB_AUTH_VARIABLE     2

#define NGX_HTTP_COLLAB_ROLE_NONE         0
#define NGX_HTTP_COLLAB_ROLE_VIEWER       1
#define NGX_HTTP_COLLAB_ROLE_COMMENTER    2
#define NGX_HTTP_COLLAB_ROLE_EDITOR       3
#define NGX_HTTP_COLLAB_ROLE_OWNER        4

#define NGX_HTTP_COLLAB_PROTOCOL_V1       0   /* collab.v1 */
#define NGX_HTTP_COLLAB_PROTOCOL_YJS      1   /* y-websocket */

#define NGX_HTTP_COLLAB_MERGE_NONE        0
#define NGX_HTTP_COLLAB_MERGE_JSON        1

#define NGX_HTTP_COLLAB_CONFLICT_ACCEPT   0
#define NGX_HTTP_COLLAB_CONFLICT_REJECT   1

/* a session's membership of a document */
#define NGX_HTTP_COLLAB_SUB_JOINING       0   /* waiting for the first read */
#define NGX_HTTP_COLLAB_SUB_CATCHUP       1   /* reading the log */
#define NGX_HTTP_COLLAB_SUB_LIVE          2   /* fed by pub/sub */

/* cluster: a subscriber connection is rebuilt after as many S(UN)SUBSCRIBE */
#define NGX_HTTP_COLLAB_SHARD_MAX         65536

#define NGX_HTTP_COLLAB_REDIS_DOWN        0
#define NGX_HTTP_COLLAB_REDIS_CONNECTING  1
#define NGX_HTTP_COLLAB_REDIS_SETUP       2   /* AUTH, SELECT, FUNCTION */
#define NGX_HTTP_COLLAB_REDIS_READY       3


typedef struct ngx_http_collab_main_conf_s  ngx_http_collab_main_conf_t;
typedef struct ngx_http_collab_loc_conf_s   ngx_http_collab_loc_conf_t;
typedef struct ngx_http_collab_session_s    ngx_http_collab_session_t;
typedef struct ngx_http_collab_doc_s        ngx_http_collab_doc_t;
typedef struct ngx_http_collab_sub_s        ngx_http_collab_sub_t;
typedef struct ngx_http_collab_msg_s        ngx_http_collab_msg_t;
typedef struct ngx_http_collab_out_s        ngx_http_collab_out_t;
typedef struct ngx_http_collab_cmd_s        ngx_http_collab_cmd_t;
typedef struct ngx_http_collab_redis_s      ngx_http_collab_redis_t;
typedef struct ngx_http_collab_read_s       ngx_http_collab_read_t;
typedef struct ngx_http_collab_acl_load_s   ngx_http_collab_acl_load_t;
typedef struct ngx_http_collab_acl_admin_s  ngx_http_collab_acl_admin_t;
typedef struct ngx_http_collab_get_s        ngx_http_collab_get_t;
typedef struct ngx_http_collab_metrics_sh_s ngx_http_collab_metrics_sh_t;
typedef struct ngx_http_collab_yjs_s        ngx_http_collab_yjs_t;
typedef struct ngx_http_collab_cluster_s    ngx_http_collab_cluster_t;
typedef struct ngx_http_collab_replica_s    ngx_http_collab_replica_t;


/* a Redis or Sentinel TCP address: an IP, for hiredis's blocking resolver */
typedef struct {
    u_char                       host[NGX_SOCKADDR_STRLEN + 1];
    in_port_t                    port;           /* 0: not known */
    size_t                       text_len;
    u_char                       text[NGX_SOCKADDR_STRLEN + 8];
} ngx_http_collab_addr_t;


struct ngx_http_collab_main_conf_s {
    ngx_str_t                    redis_addr;     /* as configured */
    ngx_str_t                    redis_host;     /* IP text, NUL-ended */
    in_port_t                    redis_port;
    ngx_str_t                    redis_unix;     /* path, NUL-ended */
    ngx_str_t                    redis_password;
    ngx_int_t                    redis_db;
    ngx_msec_t                   redis_timeout;
    ngx_msec_t                   redis_connect_timeout;
    ngx_uint_t                   redis_max_inflight;
    ngx_uint_t                   redis_session_inflight;
    ngx_str_t                    sentinel_master; /* "sentinel:NAME" */
    ngx_array_t                 *sentinels;      /* ngx_http_collab_addr_t */
    ngx_array_t                 *cluster_seeds;  /* ngx_http_collab_addr_t */
    ngx_uint_t                   ack_replicas;   /* ack=replicated[:N] */
    ngx_msec_t                   ack_timeout;
    ngx_http_collab_addr_t      *replica;        /* replica=, for reads */
    ngx_msec_t                   replica_lag;
    ngx_uint_t                   enabled;        /* any collab location */
    ngx_shm_zone_t              *limit_zone;
    void                        *limit_sh;
    ngx_flag_t                   limit_implicit; /* no collab_limit_zone */
    ngx_flag_t                   metrics;        /* a collab_metrics location */
    ngx_shm_zone_t              *metrics_zone;
    ngx_msec_t                   presence_ttl;
};


struct ngx_http_collab_loc_conf_s {
    ngx_flag_t                   enable;
    ngx_uint_t                   protocol;       /* PROTOCOL_* */
    ngx_int_t                    yjs_compact;    /* updates, 0: off */
    ngx_http_complex_value_t    *doc;
    ngx_http_complex_value_t    *user;
    ngx_uint_t                   auth;
    ngx_array_t                 *allow_origin;   /* of ngx_str_t */
    size_t                       max_message;
    ngx_flag_t                   max_message_set; /* here or above */
    ngx_flag_t                   send_queue_set;
    ngx_uint_t                   max_docs;
    size_t                       send_queue;
    ngx_msec_t                   ping;
    ngx_uint_t                   merge;
    size_t                       state_max;      /* json-merge state */
    ngx_uint_t                   conflict;
    ngx_uint_t                   rate;           /* per 1000 s */
    ngx_uint_t                   burst;
    size_t                       rate_bytes;     /* per second */
    size_t                       rate_bytes_burst;
    ngx_uint_t                   user_rate;      /* per 1000 s */
    ngx_uint_t                   user_burst;
    ngx_uint_t                   max_user_sessions;
    ngx_uint_t                   max_doc_sessions;
    ngx_msec_t                   send_timeout;
    ngx_uint_t                   max_inflight;   /* deltas per session */
    ngx_uint_t                   default_role;
    void                        *jwt_keys;       /* jwt_keys_t */
    ngx_str_t                    jwt_cookie;     /* empty: off */
    ngx_flag_t                   jwt_require_exp;
    ngx_msec_t                   jwt_leeway;
    ngx_str_t                    jwt_issuer;     /* NUL-ended */
    ngx_str_t                    jwt_audience;   /* NUL-ended */
    ngx_msec_t                   auth_timeout;
    ngx_str_t                    admin_key;
    ngx_flag_t                   admin;
    ngx_uint_t                   post_max_messages;
    ngx_uint_t                   log_keep;       /* entries, 0: off */
    ngx_msec_t                   log_age;        /* 0: off */
    ngx_msec_t                   op_window;      /* 0: forever */
    ngx_msec_t                   doc_expire;     /* 0: never */
    ngx_uint_t                   presence_rate;  /* per second */
    ngx_uint_t                   presence_max;   /* in a snapshot */
    size_t                       presence_size;
};


/*
 * An outbound message shared by every session it is queued to: encoded
 * once, framed lazily once per transport, freed with the last reference.
 */
struct ngx_http_collab_msg_s {
    ngx_uint_t                   refs;
    uint64_t                     seq;
    ngx_str_t                    type;
    ngx_str_t                    epoch;          /* for the SSE id */
    size_t                       len;
    u_char                      *json;
    u_char                      *ws;
    size_t                       ws_len;
    u_char                      *sse;
    size_t                       sse_len;
    ngx_http_collab_msg_t       *yjs;            /* as a Yjs message */
    ngx_uint_t                   mtype;          /* metrics: MT_* + 1, 0: not
                                                    known yet */
    u_char                       data[1];
};


/* a queued reference to a message, with the session's own send position */
struct ngx_http_collab_out_s {
    ngx_http_collab_out_t       *next;
    ngx_http_collab_msg_t       *msg;            /* NULL: control frame */
    ngx_buf_t                    buf;
    ngx_chain_t                  cl;
    u_char                       ctl[2 + 125];
};


struct ngx_http_collab_sub_s {
    ngx_queue_t                  doc_link;
    ngx_queue_t                  session_link;
    ngx_http_collab_doc_t       *doc;
    ngx_http_collab_session_t   *session;
    ngx_http_collab_cmd_t       *read;           /* log read in flight */
    uint64_t                     pos;            /* last seq delivered */
    int64_t                      since;          /* -1: snapshot wanted */
    u_char                       epoch[NGX_HTTP_COLLAB_EPOCH_LEN];
    ngx_uint_t                   state;
    ngx_uint_t                   role;
    unsigned                     has_epoch:1;
    unsigned                     stalled:1;      /* waits for drain/Redis */
    unsigned                     rereads:3;
    unsigned                     counted:1;      /* in the doc limit */
    ngx_uint_t                   limit_slot;     /* where it is counted */
    unsigned                     again:1;        /* re-subscribed: the read
                                                    in flight is stale */
    unsigned                     primary:1;      /* the next read: not on
                                                    the replica */
    ngx_uint_t                   acl_gen;        /* doc's at the read */
    ngx_uint_t                   epoch_gen;      /* doc's at the read */
    size_t                       budget;         /* bytes asked of it */

    /* the session's presence on the document: see presence.c */
    u_char                      *presence;       /* collab_presence_size */
    size_t                       presence_len;
    uint64_t                     presence_seq;   /* of the snapshot */
    ngx_uint_t                   presence_gen;   /* snapshot asked */
    const char                  *leave_reason;
    unsigned                     presence_pending:1;
    unsigned                     presence_stored:1;
    unsigned                     presence_ready:1; /* had its snapshot */
    unsigned                     presence_tries:2;
};


struct ngx_http_collab_doc_s {
    ngx_str_node_t               node;
    ngx_queue_t                  subs;
    ngx_uint_t                   nsubs;
    uint64_t                     seq;            /* highest seen live */
    ngx_str_t                    channel;        /* collab:{doc} */
    ngx_http_collab_redis_t     *redis;          /* subscribed there */
    unsigned                     subscribed:1;
    unsigned                     in_redis:1;     /* dict entry in hiredis */
    unsigned                     unsubscribing:1;
    unsigned                     moved:1;        /* cluster: its slot left
                                                    the node subscribed */
    u_char                       epoch[NGX_HTTP_COLLAB_EPOCH_LEN];
    unsigned                     has_epoch:1;
    unsigned                     acl_known:1;
    unsigned                     acl_again:1;
    unsigned                     acl_stale:1;    /* changed, not reloaded */
    unsigned                     reset_wait:1;   /* epoch read, its "reset"
                                                    not seen on the channel */
    unsigned                     unconfirmed:1;  /* as reset_wait, members
                                                    live since: the reset
                                                    still resyncs them */
    ngx_msec_t                   reset_time;     /* reset_wait since */
    ngx_event_t                  reset_poll;     /* reads during it */
    ngx_uint_t                   acl_gen;        /* ACL events and loads */
    ngx_uint_t                   epoch_gen;      /* epoch changes */
    json_t                      *acl;            /* NULL: no ACL document */
    ngx_http_collab_cmd_t       *acl_cmd;
    ngx_event_t                  acl_retry;
    ngx_msec_t                   acl_backoff;
    ngx_uint_t                   held;           /* callers walking it */
    ngx_msec_t                   acl_notice;     /* first unapplied notice */
    uint64_t                     presence_seq;   /* highest seen live */
    uint64_t                     yjs_snap;       /* Yjs snapshot known or
                                                    asked for here */
};


typedef void (*ngx_http_collab_cmd_handler_pt)(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);

/*
 * The callback data handed to hiredis.  The session may go away before the
 * reply comes: its cleanup sets cmd->session to NULL and the reply handler
 * then only frees the command.
 */
struct ngx_http_collab_cmd_s {
    ngx_queue_t                  session_link;
    ngx_queue_t                  redis_link;
    ngx_http_collab_session_t   *session;
    ngx_http_collab_sub_t       *sub;
    ngx_http_collab_doc_t       *doc_owner;      /* NULL = cut */
    ngx_http_collab_cmd_handler_pt  handler;
    ngx_msec_t                   sent;
    ngx_uint_t                   slot;           /* POST reply index */
    size_t                       budget;         /* log read: reserved */
    int64_t                      seq;            /* stored, awaiting WAIT */
    ngx_str_t                    doc;
    ngx_str_t                    id;
    ngx_http_collab_redis_t     *rc;             /* sent on */
    char                        *fmt;            /* cluster: to resend */
    size_t                       fmt_len;
    ngx_uint_t                   fence_arg;      /* its index, 0: none */
    size_t                       fence_off;      /* cluster: in fmt */
    size_t                       fence_len;
    ngx_uint_t                   redirects;
    unsigned                     asking:1;       /* ASK: ASKING first */
    unsigned                     by_name:1;      /* the worker's: the reply
                                                    finds its doc by name */
    u_char                       data[1];
};


struct ngx_http_collab_redis_s {
    redisAsyncContext           *ac;
    ngx_connection_t            *connection;
    ngx_event_t                  reconnect;
    ngx_event_t                  watchdog;
    ngx_event_t                  heartbeat;
    ngx_event_t                  kick;           /* posted: kick_later */
    const char                  *kick_why;
    ngx_msec_t                   backoff;
    ngx_uint_t                   state;
    ngx_queue_t                  inflight;
    ngx_uint_t                   ninflight;
    ngx_uint_t                   setup_pending;
    time_t                       full_logged;
    ngx_log_t                   *log;
    ngx_http_collab_main_conf_t *mcf;
    ngx_str_t                    addr;           /* of this connection */
    ngx_http_collab_addr_t       target;         /* sentinel mode */
    ngx_uint_t                   next_sentinel;
    ngx_uint_t                   node;           /* cluster: its index + 1 */
    ngx_uint_t                   nshard;         /* cluster: S(UN)SUBSCRIBEs */

    /* ack=replicated: WAIT counts this connection's writes */
    ngx_queue_t                  acks;           /* stored, await a WAIT */
    ngx_http_collab_cmd_t       *wait;           /* the WAIT in flight */
    ngx_uint_t                   wait_batch;     /* acks it answers */
    ngx_msec_t                   replicas_short; /* a WAIT fell short then */

    /* the epoch fence (see NGX_HTTP_COLLAB_FENCE_MAX) */
    size_t                       fence_len;
    u_char                       fence[NGX_HTTP_COLLAB_FENCE_MAX];

    unsigned                     subscriber:1;
    unsigned                     sentinel:1;     /* to a Redis Sentinel */
    unsigned                     replica:1;      /* to the replica= */
    unsigned                     kicked:1;       /* dropped on purpose */
    unsigned                     fence_asking:1; /* cluster: asked again */
    unsigned                     cluster_map:1;  /* asks for the slot map */
    unsigned                     exiting:1;
    unsigned                     heartbeat_pending:1;
    const char                  *name;
};


struct ngx_http_collab_session_s {
    ngx_http_request_t          *request;        /* NULL once detached */
    ngx_http_cleanup_t          *cln;
    ngx_connection_t            *connection;
    ngx_http_collab_loc_conf_t  *conf;
    ngx_queue_t                  link;           /* worker's sessions */
    ngx_uint_t                   transport;

    u_char                       id[16];
    ngx_str_t                    user;
    u_char                       client[NGX_HTTP_COLLAB_CLIENT_MAX];
    size_t                       client_len;     /* in op keys */
    ngx_str_t                    groups;         /* comma-separated */
    json_t                      *claims;
    ngx_str_t                    pending_doc;    /* subscribe after auth */

    ngx_queue_t                  subs;
    ngx_uint_t                   nsubs;
    ngx_queue_t                  cmds;
    ngx_uint_t                   inflight;       /* deltas */
    ngx_uint_t                   ncmds;          /* Redis commands */
    size_t                       read_reserved;  /* asked by log reads */

    ngx_http_collab_out_t       *out;
    ngx_http_collab_out_t      **out_last;
    ngx_http_collab_out_t       *out_passed;     /* SSE: handed to filters */
    ngx_http_collab_out_t       *pong;           /* queued, not yet written */
    size_t                       out_bytes;
    ngx_msec_t                   out_moved;      /* queue last made progress */
    ngx_msec_t                   closed_at;      /* close was decided */

    ngx_http_collab_ws_parser_t *parser;
    u_char                      *rest;           /* unparsed, blocked */
    size_t                       rest_len;
    u_char                      *msg;
    size_t                       msg_len;
    size_t                       msg_size;

    ngx_event_t                  ping;
    ngx_event_t                  linger;
    ngx_event_t                  expire;         /* auth timeout, exp */
    ngx_event_t                  drain;          /* slow consumer */
    ngx_event_t                  detach;         /* WS: drop the request */
    u_char                      *strings;        /* user */
    u_char                      *pending_buf;    /* pending doc, epoch */

    uint64_t                     limit_excess;
    ngx_msec_t                   limit_last;
    uint64_t                     limit_bytes_excess;
    ngx_msec_t                   limit_bytes_last;
    ngx_msec_t                   strike_start;
    ngx_uint_t                   strikes;
    size_t                       cur_len;        /* of the message */
    ngx_str_t                    cur_data;       /* its "data" as sent */
    ngx_msec_t                   last_recv;

    ngx_str_t                    cursor_epoch;   /* SSE resume */
    int64_t                      cursor_since;

    /* POST */
    ngx_http_collab_msg_t      **replies;
    ngx_uint_t                   nreplies;
    ngx_uint_t                   pending;
    ngx_uint_t                   limit_slot;     /* where it is counted */

    ngx_http_collab_get_t       *get;            /* an HTTP read */
    ngx_http_collab_yjs_t       *yjs;            /* y-websocket */

    unsigned                     closing:1;      /* close frame queued */
    unsigned                     close_sent:1;
    unsigned                     close_received:1;
    unsigned                     read_blocked:1;
    unsigned                     read_full:1;    /* waits for queue room */
    unsigned                     shutdown:1;
    unsigned                     finalize:1;
    unsigned                     last_sent:1;
    unsigned                     authenticated:1;
    unsigned                     counted:1;      /* in the user limit */
    unsigned                     ws_v1:1;        /* collab.v1 offered */
    unsigned                     metric_session:1; /* in collab_sessions */
    ngx_uint_t                   metric_conn;    /* the transport counted in
                                                    collab_connections */
    ngx_uint_t                   close_code;     /* of the end, first
                                                    decided wins; 0: none
                                                    (the peer went away) */

    ngx_event_t                  presence;       /* sends the latest */
    ngx_msec_t                   presence_last;  /* last sent */

    /* what its access log line says (ngx_http_collab_log.c) */
    ngx_msec_t                   log_start;
    ngx_uint_t                   log_msgs_in;
    ngx_uint_t                   log_msgs_out;
    off_t                        log_bytes_out;
    u_char                      *log_docs;       /* comma-separated */
    size_t                       log_docs_len;
    ngx_uint_t                   log_docs_more;  /* beyond the bound */
};


/* the request context until a session replaces it */
typedef struct {
    ngx_str_t                    token;
} ngx_http_collab_early_t;


typedef struct {
    ngx_queue_t                  sessions;
    ngx_rbtree_t                 docs;
    ngx_rbtree_node_t            sentinel;
    ngx_http_collab_redis_t      cmd;
    ngx_http_collab_redis_t      sub;
    ngx_http_collab_redis_t      watch;          /* to a sentinel */
    ngx_http_collab_redis_t      rcmd;           /* to the replica= */
    ngx_http_collab_redis_t      rsub;
    ngx_http_collab_replica_t   *replica;        /* its state */
    ngx_http_collab_addr_t       primary;        /* as the sentinels say */
    int64_t                      primary_epoch;  /* its config-epoch */
    ngx_http_collab_cluster_t   *cluster;        /* cluster mode */
    ngx_connection_t            *watcher;
    ngx_event_t                  retry;
    time_t                       deny_sec;
    ngx_uint_t                   deny_count;
    ngx_http_collab_out_t       *free_out;
    ngx_uint_t                   nfree_out;
    ngx_http_collab_main_conf_t *mcf;
    ngx_log_t                   *log;
    u_char                      *recv_buf;
    size_t                       recv_size;
    ngx_event_t                  presence_refresh;
} ngx_http_collab_worker_t;


extern ngx_module_t  ngx_http_collab_module;
extern ngx_http_collab_worker_t  *ngx_http_collab_worker;


/* helpers (ngx_http_collab_util.c) */
ngx_int_t ngx_http_collab_conf_read_file(ngx_conf_t *cf, ngx_str_t *name,
    size_t max, ngx_pool_t *pool, ngx_str_t *out);
ngx_table_elt_t *ngx_http_collab_header(ngx_http_request_t *r,
    const char *name, size_t len);
ngx_int_t ngx_http_collab_doc_id_valid(u_char *p, size_t len);
ngx_int_t ngx_http_collab_origin_allowed(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf);
ngx_str_t *ngx_http_collab_log_escape(ngx_str_t *dst, u_char *buf,
    ngx_str_t *src);

/*
 * A client-controlled string made safe for one log line: control bytes,
 * quotes, backslashes and bytes above 0x7e as \xNN, cut to fit a buffer
 * on the stack of the calling block.  Use only as a log argument.
 */
#define NGX_HTTP_COLLAB_LOG_ESC  512
#define ngx_http_collab_esc(s)                                               \
    ngx_http_collab_log_escape(&(ngx_str_t) { 0, NULL },                     \
                               (u_char [NGX_HTTP_COLLAB_LOG_ESC]) { 0 }, (s))

/* access log variables */
ngx_int_t ngx_http_collab_log_add_variables(ngx_conf_t *cf);
ngx_int_t ngx_http_collab_log_wanted(ngx_http_request_t *r);
void ngx_http_collab_log_doc(ngx_http_collab_session_t *s, ngx_str_t *doc);
void ngx_http_collab_log_end(ngx_http_collab_session_t *s,
    ngx_http_request_t *r);

/* WebSocket transport */
ngx_int_t ngx_http_collab_ws_handshake(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf);
u_char *ngx_http_collab_ws_frame(ngx_http_collab_msg_t *m, size_t *len);
void ngx_http_collab_ws_fail(ngx_http_collab_session_t *s, ngx_uint_t code,
    const char *reason);
ngx_int_t ngx_http_collab_ws_ping(ngx_http_collab_session_t *s);
ngx_int_t ngx_http_collab_ws_flush(ngx_http_collab_session_t *s);

/* SSE transport */
ngx_int_t ngx_http_collab_sse_start(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf);
u_char *ngx_http_collab_sse_event(ngx_http_collab_msg_t *m, size_t *len);
ngx_int_t ngx_http_collab_sse_heartbeat(ngx_http_collab_session_t *s);
ngx_int_t ngx_http_collab_sse_flush(ngx_http_collab_session_t *s);

/* POST transport */
ngx_int_t ngx_http_collab_post_start(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf);
void ngx_http_collab_post_reply(ngx_http_collab_session_t *s,
    ngx_uint_t slot, ngx_http_collab_msg_t *m);

/* HTTP reads */

/*
 * What a GET asks and, once the store replied, its answer: built by the
 * reply handler in the request pool, sent from the request's write event.
 */
struct ngx_http_collab_get_s {
    ngx_str_t                    doc;
    int64_t                      since;          /* -1: view=state */
    ngx_str_t                    epoch;          /* the client's; or empty */
    ngx_uint_t                   limit;
    ngx_uint_t                   status;         /* 0: no answer yet */
    ngx_str_t                    etag;
    ngx_msec_t                   retry;          /* Retry-After, ms */
    ngx_buf_t                   *body;
};

ngx_int_t ngx_http_collab_get_start(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf);
void ngx_http_collab_get_done(ngx_http_collab_session_t *s,
    ngx_http_collab_read_t *rd);

/* the y-websocket protocol */
ngx_int_t ngx_http_collab_yjs_target(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_str_t *doc);
ngx_int_t ngx_http_collab_yjs_init(ngx_http_collab_session_t *s,
    ngx_str_t *doc);
void ngx_http_collab_yjs_free(ngx_http_collab_session_t *s);
void ngx_http_collab_yjs_start(ngx_http_collab_session_t *s);
void ngx_http_collab_yjs_live(ngx_http_collab_sub_t *sub);
void ngx_http_collab_yjs_message(ngx_http_collab_session_t *s, u_char *p,
    size_t len);
ngx_int_t ngx_http_collab_yjs_send(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m);
ngx_int_t ngx_http_collab_yjs_leave(ngx_http_collab_session_t *s,
    ngx_str_t *json);
ngx_uint_t ngx_http_collab_yjs_close_code(ngx_uint_t code);

/* protocol */
ngx_int_t ngx_http_collab_proto_client(ngx_http_collab_session_t *s,
    ngx_http_request_t *r);
void ngx_http_collab_proto_handle(ngx_http_collab_session_t *s,
    u_char *text, size_t len, ngx_uint_t slot);
ngx_int_t ngx_http_collab_proto_handle_json(ngx_http_collab_session_t *s,
    json_t *obj, ngx_uint_t slot);
ngx_http_collab_msg_t *ngx_http_collab_msg_alloc(size_t len);
ngx_http_collab_msg_t *ngx_http_collab_msg_error(const char *type,
    const char *code, ngx_str_t *doc, ngx_str_t *id, const char *fmt, ...);
ngx_http_collab_msg_t *ngx_http_collab_msg_build(const char *type, ...);
ngx_http_collab_msg_t *ngx_http_collab_msg_busy(const char *type,
    ngx_str_t *doc, ngx_str_t *id, ngx_msec_t retry);
void ngx_http_collab_reply(ngx_http_collab_session_t *s, ngx_uint_t slot,
    ngx_http_collab_msg_t *m);
void ngx_http_collab_msg_release(ngx_http_collab_msg_t *m);
ngx_http_collab_msg_t *ngx_http_collab_msg_delta(ngx_str_t *doc,
    uint64_t seq, ngx_str_t *id, ngx_str_t *user, ngx_str_t *ts,
    ngx_str_t *data);

/* sessions */
ngx_http_collab_session_t *ngx_http_collab_session_create(
    ngx_http_request_t *r, ngx_http_collab_loc_conf_t *lcf,
    ngx_uint_t transport, ngx_int_t *status);
void ngx_http_collab_session_end(ngx_http_collab_session_t *s);
void ngx_http_collab_session_cleanup(void *data);
ngx_int_t ngx_http_collab_session_send(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m);
ngx_int_t ngx_http_collab_session_queue(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m);
ngx_int_t ngx_http_collab_session_send_ctl(ngx_http_collab_session_t *s,
    ngx_uint_t opcode, u_char *data, size_t len);
void ngx_http_collab_session_post_write(ngx_http_collab_session_t *s);
void ngx_http_collab_session_flush(ngx_http_collab_session_t *s);
void ngx_http_collab_session_sent(ngx_http_collab_session_t *s);
void ngx_http_collab_session_close(ngx_http_collab_session_t *s,
    ngx_uint_t code, const char *reason);
void ngx_http_collab_session_finalize(ngx_http_collab_session_t *s);
void ngx_http_collab_session_welcome(ngx_http_collab_session_t *s);
void ngx_http_collab_session_shutdown_all(void);
void ngx_http_collab_session_start_timers(ngx_http_collab_session_t *s);

/* documents */
ngx_int_t ngx_http_collab_doc_subscribe(ngx_http_collab_session_t *s,
    ngx_str_t *name, int64_t since, ngx_str_t *epoch);
ngx_int_t ngx_http_collab_doc_unsubscribe(ngx_http_collab_session_t *s,
    ngx_str_t *name);
void ngx_http_collab_doc_sub_free(ngx_http_collab_sub_t *sub);
void ngx_http_collab_doc_resume(ngx_http_collab_session_t *s);
void ngx_http_collab_doc_redis_ready(ngx_http_collab_redis_t *rc);
void ngx_http_collab_doc_redis_follow(void);
void ngx_http_collab_doc_retry_handler(ngx_event_t *ev);
void ngx_http_collab_doc_retry_later(void);
void ngx_http_collab_doc_sub_read(ngx_http_collab_sub_t *sub);
ngx_int_t ngx_http_collab_doc_publish(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_http_collab_msg_t *m);
void ngx_http_collab_doc_read_done(ngx_http_collab_sub_t *sub,
    ngx_http_collab_read_t *rd);

ngx_http_collab_sub_t *ngx_http_collab_doc_find(ngx_http_collab_session_t *s,
    ngx_str_t *name);
ngx_http_collab_doc_t *ngx_http_collab_doc_lookup(ngx_str_t *name);
void ngx_http_collab_doc_revoke(ngx_http_collab_sub_t *sub);
void ngx_http_collab_doc_hold(ngx_http_collab_doc_t *doc);
ngx_int_t ngx_http_collab_doc_release(ngx_http_collab_doc_t *doc);
void ngx_http_collab_doc_acl_known(ngx_http_collab_doc_t *doc);

/* identity */
char *ngx_http_collab_auth_jwt_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_collab_auth_early(ngx_http_request_t *r);
ngx_int_t ngx_http_collab_auth_request(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, json_t **claims);
ngx_int_t ngx_http_collab_auth_verify(ngx_http_collab_loc_conf_t *lcf,
    u_char *token, size_t len, json_t **claims, const char **err);
ngx_int_t ngx_http_collab_auth_apply(ngx_http_collab_session_t *s,
    json_t *claims);
void ngx_http_collab_auth_wait(ngx_http_collab_session_t *s);
void ngx_http_collab_auth_message(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot);
void ngx_http_collab_session_authenticated(ngx_http_collab_session_t *s);

/* limits */
char *ngx_http_collab_limit_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_collab_limit_zone_add(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, size_t size);
ngx_int_t ngx_http_collab_limit_post(ngx_http_collab_session_t *s,
    ngx_uint_t peek, ngx_msec_t *retry);
ngx_int_t ngx_http_collab_limit_message(ngx_http_collab_session_t *s,
    ngx_uint_t cost, size_t len, ngx_msec_t *retry);
ngx_int_t ngx_http_collab_limit_ephemeral(ngx_http_collab_session_t *s,
    uint64_t *excess, ngx_msec_t *last);
ngx_int_t ngx_http_collab_limit_acquire(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_uint_t *index);
void ngx_http_collab_limit_release(ngx_uint_t index);

ngx_int_t ngx_http_collab_limit_usage(ngx_uint_t *used, ngx_uint_t *total);

/* metrics (ngx_http_collab_metrics.c) */

/* counters: a family's labels follow its base */
#define NGX_HTTP_COLLAB_M_IN              0    /* + MT_*, up to PRESENCE */
#define NGX_HTTP_COLLAB_M_OUT             16   /* + MT_* */
#define NGX_HTTP_COLLAB_M_BYTES_IN        32
#define NGX_HTTP_COLLAB_M_BYTES_OUT       33
#define NGX_HTTP_COLLAB_M_ACKS            34
#define NGX_HTTP_COLLAB_M_NACKS           35   /* + code, 8 */
#define NGX_HTTP_COLLAB_M_DISCONNECTS     43   /* + close code, 14 */
#define NGX_HTTP_COLLAB_M_RATE_LIMITED    57   /* + LIMIT_* */
#define NGX_HTTP_COLLAB_M_LAGGING         64
#define NGX_HTTP_COLLAB_M_RESYNCS         65   /* + reason, 4 */
#define NGX_HTTP_COLLAB_M_AUTH_FAILURES   69   /* + AUTHF_* */
#define NGX_HTTP_COLLAB_M_ACL_RELOADS     74
#define NGX_HTTP_COLLAB_M_REDIS_COMMANDS  75
#define NGX_HTTP_COLLAB_M_REDIS_ERRORS    76
#define NGX_HTTP_COLLAB_M_REDIS_RECONNECTS  77
#define NGX_HTTP_COLLAB_M_N               80

#define NGX_HTTP_COLLAB_MT_OTHER          0
#define NGX_HTTP_COLLAB_MT_PRESENCE       7
#define NGX_HTTP_COLLAB_MT_ACK            10
#define NGX_HTTP_COLLAB_MT_NACK           11

#define NGX_HTTP_COLLAB_LIMIT_MESSAGES    0
#define NGX_HTTP_COLLAB_LIMIT_BYTES       1
#define NGX_HTTP_COLLAB_LIMIT_USER        2
#define NGX_HTTP_COLLAB_LIMIT_POST        3
#define NGX_HTTP_COLLAB_LIMIT_USER_SESSIONS  4
#define NGX_HTTP_COLLAB_LIMIT_DOC_SESSIONS   5
#define NGX_HTTP_COLLAB_LIMIT_REDIS       6

#define NGX_HTTP_COLLAB_AUTHF_MISSING     0
#define NGX_HTTP_COLLAB_AUTHF_INVALID     1
#define NGX_HTTP_COLLAB_AUTHF_EXPIRED     2
#define NGX_HTTP_COLLAB_AUTHF_TIMEOUT     3
#define NGX_HTTP_COLLAB_AUTHF_MISMATCH    4

/* gauges, per process */
#define NGX_HTTP_COLLAB_G_CONN            0    /* + transport - 1 */
#define NGX_HTTP_COLLAB_G_SESSIONS        5
#define NGX_HTTP_COLLAB_G_DOCUMENTS       6
#define NGX_HTTP_COLLAB_G_REDIS_INFLIGHT  7
#define NGX_HTTP_COLLAB_G_REPLICA_USABLE  8
#define NGX_HTTP_COLLAB_G_N               9

#define NGX_HTTP_COLLAB_H_REDIS           0
#define NGX_HTTP_COLLAB_H_FANOUT          1
#define NGX_HTTP_COLLAB_H_REVOCATION      2
#define NGX_HTTP_COLLAB_H_REPLAY          3
#define NGX_HTTP_COLLAB_H_N               4
#define NGX_HTTP_COLLAB_HIST_MAX          14

#define NGX_HTTP_COLLAB_METRICS_SLOTS     256

extern ngx_atomic_t  *ngx_http_collab_metrics_counter;

/* one atomic add on the hot path, nothing without the zone */
#define ngx_http_collab_metric_add(i, n)                                     \
    do {                                                                     \
        if (ngx_http_collab_metrics_counter) {                               \
            (void) ngx_atomic_fetch_add(&ngx_http_collab_metrics_counter[i], \
                                        (ngx_atomic_int_t) (n));             \
        }                                                                    \
    } while (0)

#define ngx_http_collab_metric_inc(i)  ngx_http_collab_metric_add(i, 1)

char *ngx_http_collab_metrics_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_collab_metrics_zone_add(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf);
void ngx_http_collab_metrics_init_process(ngx_http_collab_main_conf_t *mcf,
    ngx_log_t *log);
void ngx_http_collab_metrics_exit_process(void);
ngx_uint_t ngx_http_collab_metrics_type(u_char *p, size_t len);
void ngx_http_collab_metrics_out(ngx_http_collab_msg_t *m, size_t len);
void ngx_http_collab_metrics_disconnect(ngx_uint_t code);
void ngx_http_collab_metrics_resync(const char *reason);
void ngx_http_collab_metrics_observe(ngx_uint_t h, uint64_t v);
void ngx_http_collab_metrics_gauge(ngx_uint_t g, ngx_int_t delta);
void ngx_http_collab_metrics_fanout(u_char *payload, size_t len);

/* ACL admin endpoint */
char *ngx_http_collab_admin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_collab_admin_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
void ngx_http_collab_admin_done(ngx_http_collab_session_t *s,
    ngx_http_collab_acl_admin_t *res);

/* roles */
ngx_uint_t ngx_http_collab_default_role(ngx_http_collab_loc_conf_t *lcf);
ngx_str_t *ngx_http_collab_role_name(ngx_uint_t role);
ngx_int_t ngx_http_collab_role_parse(u_char *p, size_t len);
ngx_uint_t ngx_http_collab_acl_grant(ngx_http_collab_session_t *s,
    ngx_str_t *doc);
ngx_uint_t ngx_http_collab_acl_role(ngx_http_collab_session_t *s,
    ngx_http_collab_doc_t *doc);
void ngx_http_collab_acl_set(ngx_http_collab_doc_t *doc, u_char *raw,
    size_t len);
void ngx_http_collab_acl_changed(ngx_http_collab_doc_t *doc);
void ngx_http_collab_acl_loaded(ngx_http_collab_doc_t *doc,
    ngx_http_collab_acl_load_t *ld);
void ngx_http_collab_acl_reevaluate_session(ngx_http_collab_session_t *s);
ngx_int_t ngx_http_collab_acl_check(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_uint_t need, const char *action);
void ngx_http_collab_acl_deny(ngx_http_collab_session_t *s, ngx_str_t *doc,
    const char *action);

/* Redis adapter */
ngx_int_t ngx_http_collab_redis_init(ngx_cycle_t *cycle,
    ngx_http_collab_redis_t *rc, ngx_http_collab_main_conf_t *mcf,
    unsigned subscriber, const char *name);
void ngx_http_collab_redis_exit(ngx_http_collab_redis_t *rc);
ngx_int_t ngx_http_collab_redis_command(ngx_http_collab_redis_t *rc,
    ngx_http_collab_cmd_t *cmd, int argc, const char **argv,
    const size_t *argvlen);
ngx_int_t ngx_http_collab_redis_raw(ngx_http_collab_redis_t *rc,
    redisCallbackFn *fn, void *data, int argc, const char **argv,
    const size_t *argvlen);
ngx_http_collab_cmd_t *ngx_http_collab_cmd_alloc(
    ngx_http_collab_session_t *s, size_t extra);
void ngx_http_collab_cmd_free(ngx_http_collab_cmd_t *cmd);
void ngx_http_collab_cmd_discard(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);
void ngx_http_collab_redis_setup_done(ngx_http_collab_redis_t *rc);
void ngx_http_collab_redis_kick_later(ngx_http_collab_redis_t *rc,
    const char *why);
void ngx_http_collab_redis_kick(ngx_http_collab_redis_t *rc,
    const char *why);

/* Redis Sentinel (ngx_http_collab_sentinel.c) */
void ngx_http_collab_sentinel_ready(ngx_http_collab_redis_t *rc);
void ngx_http_collab_sentinel_refresh(void);
ngx_int_t ngx_http_collab_addr_parse(ngx_pool_t *pool, ngx_str_t *text,
    ngx_http_collab_addr_t *addr, in_port_t default_port);
ngx_int_t ngx_http_collab_addr_set(ngx_http_collab_addr_t *addr,
    u_char *host, size_t len, ngx_int_t port);

/* a replica near this nginx for reads (ngx_http_collab_replica.c) */
ngx_int_t ngx_http_collab_replica_init(ngx_cycle_t *cycle,
    ngx_http_collab_main_conf_t *mcf);
void ngx_http_collab_replica_exit(void);
void ngx_http_collab_replica_ready(ngx_http_collab_redis_t *rc);
void ngx_http_collab_replica_lost(ngx_http_collab_redis_t *rc);
ngx_uint_t ngx_http_collab_replica_usable(void);
ngx_msec_t ngx_http_collab_replica_behind(void);
ngx_http_collab_redis_t *ngx_http_collab_replica_reads(void);

/* Redis Cluster (ngx_http_collab_cluster.c) */
ngx_int_t ngx_http_collab_cluster_init(ngx_cycle_t *cycle,
    ngx_http_collab_main_conf_t *mcf);
void ngx_http_collab_cluster_exit(void);
void ngx_http_collab_cluster_ready(ngx_http_collab_redis_t *rc);
ngx_int_t ngx_http_collab_cluster_target(ngx_http_collab_redis_t *rc);
ngx_int_t ngx_http_collab_cluster_format(ngx_http_collab_cmd_t *cmd,
    int argc, const char **argv, const size_t *argvlen);
void ngx_http_collab_cluster_sent(ngx_http_collab_cmd_t *cmd);
void ngx_http_collab_cluster_refresh(void);
ngx_uint_t ngx_http_collab_cluster_node_used(ngx_http_collab_redis_t *rc);
ngx_int_t ngx_http_collab_cluster_redirect(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);
ngx_uint_t ngx_http_collab_cluster_unserved(redisReply *reply);
ngx_int_t ngx_http_collab_cluster_moved(ngx_http_collab_redis_t *rc,
    const char *err);
size_t ngx_http_collab_cluster_lock(ngx_http_collab_redis_t *rc,
    u_char *buf);
void ngx_http_collab_cluster_shard_reply(redisAsyncContext *ac, void *r,
    void *data);
ngx_http_collab_redis_t *ngx_http_collab_redis_for_doc(ngx_str_t *doc,
    ngx_uint_t subscriber);
ngx_int_t ngx_http_collab_redis_send(ngx_http_collab_redis_t *rc,
    ngx_http_collab_cmd_t *cmd);

/* Redis commands of the document store */

/*
 * The layouts the store's functions reply and publish in, decoded by the
 * store: the strings point into the Redis reply (an event's into its
 * JSON), valid while the reply handler runs.
 */

/* a collab_read reply */
struct ngx_http_collab_read_s {
    ngx_int_t                    status;         /* NGX_OK; NGX_AGAIN: no
                                                    reply; NGX_DECLINED: no
                                                    role; NGX_ERROR */
    const char                  *error;          /* NGX_ERROR: why */
    ngx_str_t                    epoch;
    int64_t                      head;
    int64_t                      snap_seq;
    ngx_str_t                    snap;           /* data NULL: none */
    ngx_str_t                    acl;            /* data NULL: none */
    ngx_uint_t                   role;
    unsigned                     from_snap:1;    /* read from the snapshot */
    unsigned                     replica:1;      /* answered by the replica */
    ngx_uint_t                   nentries;
    redisReply                 **entries;        /* see store_read_entry */
};


/* a log entry of a collab_read reply */
typedef struct {
    int64_t                      seq;            /* -1: none */
    ngx_str_t                    id;
    ngx_str_t                    user;
    ngx_str_t                    ts;
    ngx_str_t                    data;
    size_t                       cost;           /* in collab_read's budget */
} ngx_http_collab_entry_t;


/* a message on a document's channel */
#define NGX_HTTP_COLLAB_EVENT_OTHER       0
#define NGX_HTTP_COLLAB_EVENT_DELTA       1
#define NGX_HTTP_COLLAB_EVENT_RESET       2
#define NGX_HTTP_COLLAB_EVENT_ACL         3
#define NGX_HTTP_COLLAB_EVENT_INTENT      4
#define NGX_HTTP_COLLAB_EVENT_PRESENCE    5

typedef struct {
    ngx_uint_t                   type;
    uint64_t                     seq;            /* delta */
    u_char                      *epoch;          /* reset: NULL if invalid */
    ngx_str_t                    session;        /* ephemera: the sender */
    json_t                      *obj;            /* holds the strings */
    uint64_t                     pseq;           /* presence */
    unsigned                     left:1;         /* presence: a leave */
} ngx_http_collab_event_t;


/* a collab_acl reply: the ACL document a worker was told changed */
struct ngx_http_collab_acl_load_s {
    ngx_int_t                    status;         /* NGX_OK; NGX_AGAIN: no
                                                    reply; NGX_ERROR */
    const char                  *error;          /* NGX_ERROR: why */
    ngx_str_t                    raw;            /* data NULL: none */
};


/* a collab_acl_get or collab_acl_put reply */
struct ngx_http_collab_acl_admin_s {
    ngx_int_t                    status;         /* NGX_OK; NGX_AGAIN: no
                                                    reply; NGX_DECLINED:
                                                    refused; NGX_ERROR */
    const char                  *error;          /* NGX_ERROR: why */
    unsigned                     conflict:1;     /* refused: the version
                                                    did not match */
    ngx_str_t                    acl;            /* data NULL: none */
};

/* a collab_presence_list reply: entries point into it */
typedef struct {
    ngx_int_t                    status;         /* NGX_OK; NGX_AGAIN: no
                                                    reply; NGX_ERROR */
    uint64_t                     pseq;
    ngx_uint_t                   count;          /* members in Redis */
    ngx_uint_t                   nentries;
    redisReply                 **entries;        /* strings: JSON objects */
} ngx_http_collab_presence_list_t;

ngx_int_t ngx_http_collab_store_setup(ngx_http_collab_redis_t *rc);
void ngx_http_collab_store_fence_refresh(ngx_http_collab_redis_t *rc);
ngx_int_t ngx_http_collab_store_version_ok(redisReply *reply);
ngx_int_t ngx_http_collab_store_append(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_str_t *id, ngx_str_t *data, int64_t base,
    ngx_uint_t slot);
ngx_int_t ngx_http_collab_store_state(ngx_http_collab_session_t *s,
    ngx_str_t *doc, uint64_t seq, ngx_str_t *data, ngx_uint_t slot);
ngx_int_t ngx_http_collab_store_read(ngx_http_collab_sub_t *sub);
ngx_int_t ngx_http_collab_store_fetch(ngx_http_collab_session_t *s,
    ngx_http_collab_get_t *g);
void ngx_http_collab_store_read_entry(ngx_http_collab_read_t *rd,
    ngx_uint_t i, ngx_http_collab_entry_t *e);
ngx_int_t ngx_http_collab_store_event(ngx_str_t *doc, u_char *p, size_t len,
    ngx_http_collab_event_t *ev);
void ngx_http_collab_store_event_free(ngx_http_collab_event_t *ev);
ngx_int_t ngx_http_collab_store_acl(ngx_http_collab_doc_t *doc);
void ngx_http_collab_store_deny(ngx_http_collab_session_t *s,
    ngx_str_t *doc, const char *action);
ngx_int_t ngx_http_collab_store_acl_admin(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_uint_t admin, int64_t *version, ngx_str_t *body);
void ngx_http_collab_store_epoch(u_char *epoch);
size_t ngx_http_collab_key(u_char *buf, ngx_str_t *doc, const char *suffix);
ngx_int_t ngx_http_collab_store_presence(ngx_http_collab_session_t *s,
    u_char *sid, ngx_str_t *doc, ngx_str_t *entry);
ngx_int_t ngx_http_collab_store_presence_list(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_uint_t max, ngx_uint_t gen);
ngx_int_t ngx_http_collab_store_presence_leave(ngx_str_t *doc,
    u_char *sid, const char *reason);
ngx_int_t ngx_http_collab_store_presence_refresh(ngx_str_t *doc,
    ngx_str_t *sids, ngx_uint_t n);

/* presence */
void ngx_http_collab_presence_set(ngx_http_collab_sub_t *sub,
    ngx_str_t *data);
void ngx_http_collab_presence_join(ngx_http_collab_sub_t *sub);
void ngx_http_collab_presence_snapshot(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_uint_t gen, ngx_http_collab_presence_list_t *pl);
void ngx_http_collab_presence_leave(ngx_http_collab_sub_t *sub);
void ngx_http_collab_presence_lost(ngx_str_t *doc, u_char **sids,
    ngx_uint_t n);
void ngx_http_collab_presence_handler(ngx_event_t *ev);
void ngx_http_collab_presence_init(ngx_cycle_t *cycle);
void ngx_http_collab_presence_exit(void);


#endif /* _NGX_HTTP_COLLAB_MODULE_H_INCLUDED_ */
