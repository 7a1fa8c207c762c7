
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


static ngx_int_t ngx_http_collab_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_collab_rewrite_handler(ngx_http_request_t *r);
static char *ngx_http_collab(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_collab_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_collab_redis_seeds(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *v);
static ngx_int_t ngx_http_collab_redis_replica(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *v);
static ngx_int_t ngx_http_collab_redis_replica_lag(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *v);
static ngx_int_t ngx_http_collab_redis_sentinels(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *v);
static ngx_int_t ngx_http_collab_redis_parse_addr(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *addr);
static ngx_int_t ngx_http_collab_redis_parse_option(
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *v);
static ngx_int_t ngx_http_collab_redis_parse_msec(ngx_str_t *v, size_t skip,
    ngx_msec_t *ms);
static char *ngx_http_collab_rate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_collab_rate_parse(ngx_conf_t *cf, ngx_str_t *v,
    ngx_int_t *rate, ngx_int_t *scale);
static ngx_int_t ngx_http_collab_rate_parse_option(ngx_conf_t *cf,
    ngx_str_t *v, ngx_uint_t user, ngx_int_t *burst, ssize_t *bytes);
static char *ngx_http_collab_state_max_check(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_collab_allow_origin(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_collab_log_retention(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_collab_msec_off(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_collab_init(ngx_conf_t *cf);
static void *ngx_http_collab_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_collab_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_collab_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_collab_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_collab_cookie_check(ngx_conf_t *cf,
    ngx_http_collab_loc_conf_t *conf);
static void ngx_http_collab_merge_session(ngx_http_collab_loc_conf_t *prev,
    ngx_http_collab_loc_conf_t *conf);
static void ngx_http_collab_merge_limits(ngx_http_collab_loc_conf_t *prev,
    ngx_http_collab_loc_conf_t *conf);
static void ngx_http_collab_merge_auth(ngx_http_collab_loc_conf_t *prev,
    ngx_http_collab_loc_conf_t *conf);
static ngx_int_t ngx_http_collab_check_limits(ngx_conf_t *cf,
    ngx_http_collab_loc_conf_t *conf);
static ngx_int_t ngx_http_collab_check_auth(ngx_conf_t *cf,
    ngx_http_collab_loc_conf_t *conf);
static ngx_int_t ngx_http_collab_check_main(ngx_conf_t *cf,
    ngx_http_collab_loc_conf_t *conf);
static ngx_int_t ngx_http_collab_init_process(ngx_cycle_t *cycle);
static void ngx_http_collab_exit_process(ngx_cycle_t *cycle);
static void ngx_http_collab_watcher_handler(ngx_event_t *ev);


static ngx_conf_enum_t  ngx_http_collab_auth_modes[] = {
    { ngx_string("off"), NGX_HTTP_COLLAB_AUTH_OFF },
    { ngx_string("jwt"), NGX_HTTP_COLLAB_AUTH_JWT },
    { ngx_string("variable"), NGX_HTTP_COLLAB_AUTH_VARIABLE },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_collab_protocols[] = {
    { ngx_string("collab.v1"), NGX_HTTP_COLLAB_PROTOCOL_V1 },
    { ngx_string("y-websocket"), NGX_HTTP_COLLAB_PROTOCOL_YJS },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_collab_merge_modes[] = {
    { ngx_string("none"), NGX_HTTP_COLLAB_MERGE_NONE },
    { ngx_string("json-merge"), NGX_HTTP_COLLAB_MERGE_JSON },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_collab_conflict_modes[] = {
    { ngx_string("accept"), NGX_HTTP_COLLAB_CONFLICT_ACCEPT },
    { ngx_string("reject-stale"), NGX_HTTP_COLLAB_CONFLICT_REJECT },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_collab_roles[] = {
    { ngx_string("none"), NGX_HTTP_COLLAB_ROLE_NONE },
    { ngx_string("viewer"), NGX_HTTP_COLLAB_ROLE_VIEWER },
    { ngx_string("commenter"), NGX_HTTP_COLLAB_ROLE_COMMENTER },
    { ngx_string("editor"), NGX_HTTP_COLLAB_ROLE_EDITOR },
    { ngx_string("owner"), NGX_HTTP_COLLAB_ROLE_OWNER },
    { ngx_null_string, 0 }
};


/* every delta rewrites the whole state in Redis (docs/state.md) */
#define NGX_HTTP_COLLAB_STATE_MAX  (16 * 1024 * 1024)

static ngx_conf_post_t  ngx_http_collab_state_max_post = {
    ngx_http_collab_state_max_check
};


static ngx_conf_num_bounds_t  ngx_http_collab_max_docs_bounds = {
    ngx_conf_check_num_bounds, 1, 1024
};


static ngx_conf_num_bounds_t  ngx_http_collab_post_max_bounds = {
    ngx_conf_check_num_bounds, 1, 10000
};


static ngx_conf_num_bounds_t  ngx_http_collab_presence_rate_bounds = {
    ngx_conf_check_num_bounds, 1, 1000
};


static ngx_conf_num_bounds_t  ngx_http_collab_presence_max_bounds = {
    ngx_conf_check_num_bounds, 0, 10000
};


/* a presence entry is a message's "data": within collab_max_message */
static ngx_conf_num_bounds_t  ngx_http_collab_presence_size_bounds = {
    ngx_conf_check_num_bounds, 4, 64 * 1024
};


static ngx_command_t  ngx_http_collab_commands[] = {

    { ngx_string("collab_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_collab_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_collab,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_collab_admin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_collab_metrics_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_admin_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_collab_admin_key,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_doc"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, doc),
      NULL },

    { ngx_string("collab_user"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, user),
      NULL },

    { ngx_string("collab_auth"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, auth),
      &ngx_http_collab_auth_modes },

    { ngx_string("collab_jwt_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE23,
      ngx_http_collab_auth_jwt_key,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_jwt_cookie"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, jwt_cookie),
      NULL },

    { ngx_string("collab_jwt_require_exp"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, jwt_require_exp),
      NULL },

    { ngx_string("collab_jwt_leeway"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, jwt_leeway),
      NULL },

    { ngx_string("collab_jwt_issuer"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, jwt_issuer),
      NULL },

    { ngx_string("collab_jwt_audience"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, jwt_audience),
      NULL },

    { ngx_string("collab_auth_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, auth_timeout),
      NULL },

    { ngx_string("collab_default_role"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, default_role),
      &ngx_http_collab_roles },

    { ngx_string("collab_allow_origin"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_collab_allow_origin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_max_message"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, max_message),
      NULL },

    { ngx_string("collab_max_docs"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, max_docs),
      &ngx_http_collab_max_docs_bounds },

    { ngx_string("collab_send_queue"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, send_queue),
      NULL },

    { ngx_string("collab_ping"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, ping),
      NULL },

    { ngx_string("collab_protocol"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, protocol),
      &ngx_http_collab_protocols },

    { ngx_string("collab_yjs_compact"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, yjs_compact),
      NULL },

    { ngx_string("collab_merge"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, merge),
      &ngx_http_collab_merge_modes },

    { ngx_string("collab_log_retention"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_collab_log_retention,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_op_window"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_collab_msec_off,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, op_window),
      NULL },

    { ngx_string("collab_doc_expire"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_collab_msec_off,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, doc_expire),
      NULL },

    { ngx_string("collab_state_max"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, state_max),
      &ngx_http_collab_state_max_post },

    { ngx_string("collab_conflict"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, conflict),
      &ngx_http_collab_conflict_modes },

    { ngx_string("collab_rate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE123,
      ngx_http_collab_rate,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_user_rate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_collab_rate,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_limit_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_collab_limit_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("collab_max_sessions_per_user"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, max_user_sessions),
      NULL },

    { ngx_string("collab_max_sessions_per_doc"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, max_doc_sessions),
      NULL },

    { ngx_string("collab_send_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, send_timeout),
      NULL },

    { ngx_string("collab_max_inflight"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, max_inflight),
      NULL },

    { ngx_string("collab_post_max_messages"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, post_max_messages),
      &ngx_http_collab_post_max_bounds },

    { ngx_string("collab_presence_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_collab_main_conf_t, presence_ttl),
      NULL },

    { ngx_string("collab_presence_rate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, presence_rate),
      &ngx_http_collab_presence_rate_bounds },

    { ngx_string("collab_presence_max"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, presence_max),
      &ngx_http_collab_presence_max_bounds },

    { ngx_string("collab_presence_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_collab_loc_conf_t, presence_size),
      &ngx_http_collab_presence_size_bounds },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_collab_module_ctx = {
    ngx_http_collab_log_add_variables,     /* preconfiguration */
    ngx_http_collab_init,                  /* postconfiguration */

    ngx_http_collab_create_main_conf,      /* create main configuration */
    ngx_http_collab_init_main_conf,        /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_collab_create_loc_conf,       /* create location configuration */
    ngx_http_collab_merge_loc_conf         /* merge location configuration */
};


ngx_module_t  ngx_http_collab_module = {
    NGX_MODULE_V1,
    &ngx_http_collab_module_ctx,           /* module context */
    ngx_http_collab_commands,              /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_collab_init_process,          /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_collab_exit_process,          /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


ngx_http_collab_worker_t  *ngx_http_collab_worker;


static ngx_int_t
ngx_http_collab_handler(ngx_http_request_t *r)
{
    ngx_str_t                    view;
    ngx_http_collab_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_collab_module);

    if (ngx_http_collab_auth_early(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r != r->main) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    if (ngx_http_collab_worker == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (!ngx_http_collab_origin_allowed(r, lcf)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: origin not allowed");
        return NGX_HTTP_FORBIDDEN;
    }

    if (lcf->protocol == NGX_HTTP_COLLAB_PROTOCOL_YJS
        && (r->method != NGX_HTTP_GET || r->headers_in.upgrade == NULL))
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: a y-websocket location takes WebSocket "
                      "upgrades only");

        return r->method == NGX_HTTP_GET ? NGX_HTTP_BAD_REQUEST
                                         : NGX_HTTP_NOT_ALLOWED;
    }

    if (r->method == NGX_HTTP_POST) {
        return ngx_http_collab_post_start(r, lcf);
    }

    /* HEAD: the header filter drops the body of a read */

    if ((r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))
        && ngx_http_arg(r, (u_char *) "view", 4, &view) == NGX_OK)
    {
        /* a read ends with its answer: an exiting worker still gives it */
        return ngx_http_collab_get_start(r, lcf);
    }

    if (r->method != NGX_HTTP_GET) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    if (ngx_exiting || ngx_terminate) {
        /*
         * Headers that completed after a reload: the close 1001 was already
         * sent to this worker's sessions, a new one would stay open until
         * the worker is killed.  The client reconnects to a new worker.
         */

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: worker is exiting, session refused");

        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (r->headers_in.upgrade) {
        return ngx_http_collab_ws_handshake(r, lcf);
    }

    if (r->headers_in.accept
        && ngx_strlcasestrn(r->headers_in.accept->value.data,
                            r->headers_in.accept->value.data
                            + r->headers_in.accept->value.len,
                            (u_char *) "text/event-stream", 17 - 1)
           != NULL)
    {
        return ngx_http_collab_sse_start(r, lcf);
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "collab: neither a WebSocket upgrade nor an event stream");

    return NGX_HTTP_BAD_REQUEST;
}


/*
 * The first phase that knows the location: the access_token argument of a
 * collab or admin location is taken aside and masked here, before deny,
 * auth_request, limit_req, return or the access log can show it.
 */

static ngx_int_t
ngx_http_collab_rewrite_handler(ngx_http_request_t *r)
{
    ngx_http_collab_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_collab_module);

    if ((lcf->enable != 1 && !lcf->admin) || r != r->main) {
        return NGX_DECLINED;
    }

    if (ngx_http_collab_auth_early(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_DECLINED;
}


static char *
ngx_http_collab(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_loc_conf_t *lcf = conf;

    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_collab_main_conf_t  *mcf;

    if (lcf->enable != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        /* collab_metrics, collab_admin: one would silently replace the other */
        return "conflicts with another handler of the location";
    }

    lcf->enable = 1;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_collab_module);
    mcf->enabled = 1;

    clcf->handler = ngx_http_collab_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_collab_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_main_conf_t *mcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i;

    if (mcf->redis_addr.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    mcf->redis_addr = value[1];

    if (value[1].len > 9 && ngx_strncmp(value[1].data, "sentinel:", 9) == 0) {
        mcf->sentinel_master.len = value[1].len - 9;
        mcf->sentinel_master.data = value[1].data + 9;

    } else if (value[1].len >= 8
               && ngx_strncmp(value[1].data, "cluster:", 8) == 0)
    {
        if (ngx_http_collab_redis_seeds(cf, mcf, &value[1]) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

    } else if (ngx_http_collab_redis_parse_addr(cf, mcf, &value[1])
               != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "sentinels=", 10) == 0) {
            if (ngx_http_collab_redis_sentinels(cf, mcf, &value[i])
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "replica=", 8) == 0) {
            if (ngx_http_collab_redis_replica(cf, mcf, &value[i]) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "replica_lag=", 12) == 0) {
            if (ngx_http_collab_redis_replica_lag(cf, mcf, &value[i])
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_http_collab_redis_parse_option(mcf, &value[i]) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    if (mcf->sentinel_master.len && mcf->sentinels == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" needs \"sentinels=host:port,...\"",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    if (mcf->sentinels && mcf->sentinel_master.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"sentinels=\" needs the address "
                           "\"sentinel:MASTER-NAME\"");
        return NGX_CONF_ERROR;
    }

    if (mcf->cluster_seeds && mcf->redis_db) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "a Redis Cluster has no \"db=\"");
        return NGX_CONF_ERROR;
    }

    if (mcf->cluster_seeds && mcf->replica) {
        /* a cluster's replicas follow their own primaries, slot by slot */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"replica=\" is not supported with a Redis "
                           "Cluster");
        return NGX_CONF_ERROR;
    }

    if (mcf->replica_lag != NGX_CONF_UNSET_MSEC && mcf->replica == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"replica_lag=\" needs \"replica=\"");
        return NGX_CONF_ERROR;
    }

    if (mcf->replica && mcf->redis_unix.len == 0
        && mcf->sentinel_master.len == 0
        && mcf->replica->port == mcf->redis_port
        && ngx_strcmp(mcf->replica->host, mcf->redis_host.data) == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"replica=%s:%d\" is the primary itself",
                           mcf->replica->host, (int) mcf->replica->port);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* cluster:host:port,host:port,...: where to ask for the slot map */

static ngx_int_t
ngx_http_collab_redis_seeds(ngx_conf_t *cf, ngx_http_collab_main_conf_t *mcf,
    ngx_str_t *v)
{
    u_char                  *p, *last, *comma;
    ngx_str_t                one;
    ngx_http_collab_addr_t  *a;

    mcf->cluster_seeds = ngx_array_create(cf->pool, 3,
                                          sizeof(ngx_http_collab_addr_t));
    if (mcf->cluster_seeds == NULL) {
        return NGX_ERROR;
    }

    p = v->data + 8;
    last = v->data + v->len;

    if (p == last || last[-1] == ',') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid Redis Cluster node \"\" in \"%V\"", v);
        return NGX_ERROR;
    }

    for ( /* void */ ; p < last; p = comma + 1) {
        comma = ngx_strlchr(p, last, ',');
        if (comma == NULL) {
            comma = last;
        }

        one.data = p;
        one.len = comma - p;

        a = ngx_array_push(mcf->cluster_seeds);
        if (a == NULL) {
            return NGX_ERROR;
        }

        if (one.len == 0
            || ngx_http_collab_addr_parse(cf->pool, &one, a, 6379) != NGX_OK)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid Redis Cluster node \"%V\" in \"%V\"",
                               &one, v);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* replica=host:port: a replica near this nginx for reads (replica.c) */

static ngx_int_t
ngx_http_collab_redis_replica(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *v)
{
    ngx_str_t  one;

    if (mcf->replica) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate \"replica=\"");
        return NGX_ERROR;
    }

    one.data = v->data + 8;
    one.len = v->len - 8;

    if (one.len > 5 && ngx_strncmp(one.data, "unix:", 5) == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": a replica is reached over TCP, not a "
                           "unix socket", v);
        return NGX_ERROR;
    }

    mcf->replica = ngx_pcalloc(cf->pool, sizeof(ngx_http_collab_addr_t));
    if (mcf->replica == NULL) {
        return NGX_ERROR;
    }

    if (one.len == 0
        || ngx_http_collab_addr_parse(cf->pool, &one, mcf->replica, 6379)
           != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid replica address \"%V\"", &one);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_collab_redis_replica_lag(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *v)
{
    ngx_msec_t  lag;

    if (mcf->replica_lag != NGX_CONF_UNSET_MSEC) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate \"replica_lag=\"");
        return NGX_ERROR;
    }

    if (ngx_http_collab_redis_parse_msec(v, 12, &lag) != NGX_OK
        || lag < 10 || lag > 60000)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\": a time from 10ms "
                           "to 60s", v);
        return NGX_ERROR;
    }

    mcf->replica_lag = lag;

    return NGX_OK;
}


/* sentinels=host:port,host:port,...: where to ask for the primary */

static ngx_int_t
ngx_http_collab_redis_sentinels(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *v)
{
    u_char                  *p, *last, *comma;
    ngx_str_t                one;
    ngx_http_collab_addr_t  *a;

    if (mcf->sentinels) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate \"sentinels=\"");
        return NGX_ERROR;
    }

    mcf->sentinels = ngx_array_create(cf->pool, 3,
                                      sizeof(ngx_http_collab_addr_t));
    if (mcf->sentinels == NULL) {
        return NGX_ERROR;
    }

    p = v->data + 10;
    last = v->data + v->len;

    if (p == last || last[-1] == ',') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid Sentinel address \"\" in \"%V\"", v);
        return NGX_ERROR;
    }

    while (p < last) {
        comma = ngx_strlchr(p, last, ',');
        if (comma == NULL) {
            comma = last;
        }

        one.data = p;
        one.len = comma - p;

        a = ngx_array_push(mcf->sentinels);
        if (a == NULL) {
            return NGX_ERROR;
        }

        if (one.len == 0
            || ngx_http_collab_addr_parse(cf->pool, &one, a, 26379)
               != NGX_OK)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid Sentinel address \"%V\" in \"%V\"",
                               &one, v);
            return NGX_ERROR;
        }

        p = comma + 1;
    }

    if (mcf->sentinels->nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no Sentinel address in \"%V\"", v);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* "unix:/path" or "host[:port]" */

static ngx_int_t
ngx_http_collab_redis_parse_addr(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf, ngx_str_t *addr)
{
    u_char     *p;
    ngx_url_t   u;
    ngx_int_t   n;

    if (addr->len > 5 && ngx_strncmp(addr->data, "unix:", 5) == 0) {
        mcf->redis_unix.len = addr->len - 5;
        mcf->redis_unix.data = ngx_pnalloc(cf->pool, addr->len - 4);
        if (mcf->redis_unix.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(mcf->redis_unix.data, addr->data + 5, mcf->redis_unix.len);
        mcf->redis_unix.data[mcf->redis_unix.len] = '\0';

        return NGX_OK;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *addr;
    u.no_resolve = 0;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid Redis address \"%V\"%s%s",
                           addr, u.err ? ": " : "", u.err ? u.err : "");
        return NGX_ERROR;
    }

    if (u.no_port || u.port == 0) {
        u.port = 6379;
    }

    if (u.naddrs == 0 || u.addrs[0].sockaddr->sa_family == AF_UNIX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid Redis address \"%V\"", addr);
        return NGX_ERROR;
    }

    /* hiredis 0.14 resolves with blocking getaddrinfo(): keep an IP */

    p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    n = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, p,
                      NGX_SOCKADDR_STRLEN, 0);
    p[n] = '\0';

    if (u.addrs[0].sockaddr->sa_family == AF_INET6 && p[0] == '[') {
        p[n - 1] = '\0';
        p++;
        n -= 2;
    }

    mcf->redis_host.data = p;
    mcf->redis_host.len = n;
    mcf->redis_port = u.port;

    return NGX_OK;
}


/* one "name=value" option; NGX_DECLINED: unknown or invalid */

static ngx_int_t
ngx_http_collab_redis_parse_option(ngx_http_collab_main_conf_t *mcf,
    ngx_str_t *v)
{
    ngx_int_t  n;

    if (ngx_strncmp(v->data, "password=", 9) == 0) {
        mcf->redis_password.len = v->len - 9;
        mcf->redis_password.data = v->data + 9;

        return mcf->redis_password.len ? NGX_OK : NGX_DECLINED;
    }

    if (ngx_strncmp(v->data, "db=", 3) == 0) {
        mcf->redis_db = ngx_atoi(v->data + 3, v->len - 3);

        return (mcf->redis_db == NGX_ERROR || mcf->redis_db > 65535)
               ? NGX_DECLINED : NGX_OK;
    }

    if (ngx_strncmp(v->data, "timeout=", 8) == 0) {
        return ngx_http_collab_redis_parse_msec(v, 8, &mcf->redis_timeout);
    }

    if (ngx_strncmp(v->data, "connect_timeout=", 16) == 0) {
        return ngx_http_collab_redis_parse_msec(v, 16,
                                                &mcf->redis_connect_timeout);
    }

    if (ngx_strncmp(v->data, "max_inflight=", 13) == 0) {
        n = ngx_atoi(v->data + 13, v->len - 13);
        if (n == NGX_ERROR || n == 0) {
            return NGX_DECLINED;
        }

        mcf->redis_max_inflight = n;
        return NGX_OK;
    }

    if (v->len == 14 && ngx_strncmp(v->data, "ack=replicated", 14) == 0) {
        mcf->ack_replicas = 1;
        return NGX_OK;
    }

    if (ngx_strncmp(v->data, "ack=replicated:", 15) == 0) {
        n = ngx_atoi(v->data + 15, v->len - 15);
        if (n == NGX_ERROR || n == 0 || n > 16) {
            return NGX_DECLINED;
        }

        mcf->ack_replicas = n;
        return NGX_OK;
    }

    if (v->len == 9 && ngx_strncmp(v->data, "ack=local", 9) == 0) {
        mcf->ack_replicas = 0;
        return NGX_OK;
    }

    if (ngx_strncmp(v->data, "ack_timeout=", 12) == 0) {
        return ngx_http_collab_redis_parse_msec(v, 12, &mcf->ack_timeout);
    }

    if (ngx_strncmp(v->data, "session_inflight=", 17) == 0) {
        n = ngx_atoi(v->data + 17, v->len - 17);
        if (n == NGX_ERROR || n == 0) {
            return NGX_DECLINED;
        }

        mcf->redis_session_inflight = n;
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/* a time after a "name=" prefix of skip bytes: more than zero */

static ngx_int_t
ngx_http_collab_redis_parse_msec(ngx_str_t *v, size_t skip, ngx_msec_t *ms)
{
    ngx_str_t  s;

    s.len = v->len - skip;
    s.data = v->data + skip;

    *ms = ngx_parse_time(&s, 0);

    if (*ms == (ngx_msec_t) NGX_ERROR || *ms == 0) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* collab_rate Nr/s [burst=M] [bytes=SIZE]; collab_user_rate Nr/s [burst=M] */

static char *
ngx_http_collab_rate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_loc_conf_t *lcf = conf;

    ssize_t      bytes;
    ngx_int_t    rate, scale, burst;
    ngx_str_t   *value;
    ngx_uint_t   i, user, *prate, *pburst;

    user = (cmd->name.len == sizeof("collab_user_rate") - 1);
    prate = user ? &lcf->user_rate : &lcf->rate;
    pburst = user ? &lcf->user_burst : &lcf->burst;

    if (*prate != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 3 && ngx_strcmp(value[1].data, "off") == 0
        && cf->args->nelts == 2)
    {
        *prate = 0;
        *pburst = 0;

        if (!user) {
            lcf->rate_bytes = 0;
        }

        return NGX_CONF_OK;
    }

    if (ngx_http_collab_rate_parse(cf, &value[1], &rate, &scale) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    burst = rate * 2 / scale;
    bytes = 0;

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_http_collab_rate_parse_option(cf, &value[i], user, &burst,
                                              &bytes)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    *prate = rate * 1000 / scale;
    *pburst = burst ? burst : 1;

    if (!user) {
        /* the byte limit stays on unless the rate is "off" */
        lcf->rate_bytes = bytes ? (size_t) bytes : 1024 * 1024;
    }

    return NGX_CONF_OK;
}


/* "Nr/s" or "Nr/m": N and the seconds it counts over */

static ngx_int_t
ngx_http_collab_rate_parse(ngx_conf_t *cf, ngx_str_t *v, ngx_int_t *rate,
    ngx_int_t *scale)
{
    u_char  *p;
    size_t   len;

    len = v->len;
    p = v->data + len - 3;
    *scale = 1;

    if (len > 3 && ngx_strncmp(p, "r/s", 3) == 0) {
        len -= 3;

    } else if (len > 3 && ngx_strncmp(p, "r/m", 3) == 0) {
        *scale = 60;
        len -= 3;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid rate \"%V\", expected \"Nr/s\" or "
                           "\"Nr/m\"", v);
        return NGX_ERROR;
    }

    *rate = ngx_atoi(v->data, len);
    if (*rate <= 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid rate \"%V\"", v);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* "burst=M", or "bytes=SIZE" of collab_rate */

static ngx_int_t
ngx_http_collab_rate_parse_option(ngx_conf_t *cf, ngx_str_t *v,
    ngx_uint_t user, ngx_int_t *burst, ssize_t *bytes)
{
    ngx_str_t  s;

    if (ngx_strncmp(v->data, "burst=", 6) == 0) {
        *burst = ngx_atoi(v->data + 6, v->len - 6);
        if (*burst <= 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid burst value \"%V\"", v);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (!user && ngx_strncmp(v->data, "bytes=", 6) == 0) {
        s.data = v->data + 6;
        s.len = v->len - 6;

        *bytes = ngx_parse_size(&s);
        if (*bytes <= 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid bytes value \"%V\"", v);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", v);
    return NGX_ERROR;
}


/* collab_log_retention off | [count=N] [age=TIME] */

static char *
ngx_http_collab_log_retention(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_loc_conf_t *lcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, v;
    ngx_uint_t   i;

    if (lcf->log_keep != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    lcf->log_keep = 0;
    lcf->log_age = 0;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        return NGX_CONF_OK;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "count=", 6) == 0
            && lcf->log_keep == 0)
        {
            n = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            lcf->log_keep = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "age=", 4) == 0 && lcf->log_age == 0) {
            v.data = value[i].data + 4;
            v.len = value[i].len - 4;

            /* at least a second: ts in the log are milliseconds */
            n = ngx_parse_time(&v, 0);
            if (n == NGX_ERROR || n < 1000) {
                goto invalid;
            }

            lcf->log_age = n;
            continue;
        }

        goto invalid;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\": expected \"off\", "
                       "\"count=N\" (N >= 1) or \"age=TIME\" (1s or more)",
                       &value[i]);

    return NGX_CONF_ERROR;
}


/* "off" or a time of at least a second */

static char *
ngx_http_collab_msec_off(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_int_t    n;
    ngx_str_t   *value;
    ngx_msec_t  *ms;

    ms = (ngx_msec_t *) (p + cmd->offset);

    if (*ms != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        *ms = 0;
        return NGX_CONF_OK;
    }

    n = ngx_parse_time(&value[1], 0);
    if (n == NGX_ERROR || n < 1000) {
        return "must be \"off\" or a time of at least 1s";
    }

    *ms = n;

    return NGX_CONF_OK;
}


static char *
ngx_http_collab_state_max_check(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    if (*sp == 0 || *sp > NGX_HTTP_COLLAB_STATE_MAX) {
        return "must be between 1 and 16m";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_collab_allow_origin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_loc_conf_t *lcf = conf;

    ngx_str_t   *value, *o;
    ngx_uint_t   i;

    if (lcf->allow_origin != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    lcf->allow_origin = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                         sizeof(ngx_str_t));
    if (lcf->allow_origin == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (value[i].len == 0
            || (value[i].data[0] == '*'
                && !(value[i].len == 1
                     || (value[i].len > 2 && value[i].data[1] == '.')))
            || (value[i].data[0] != '*'
                && ngx_strlcasestrn(value[i].data,
                                    value[i].data + value[i].len,
                                    (u_char *) "://", 3 - 1) == NULL))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid origin \"%V\", expected "
                               "\"scheme://host[:port]\", \"*.domain\" "
                               "or \"*\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        o = ngx_array_push(lcf->allow_origin);
        if (o == NULL) {
            return NGX_CONF_ERROR;
        }

        *o = value[i];
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_collab_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /*
     * Handlers of a phase run last registered first: this module is
     * loaded after nginx's own, so it masks before rewrite's "return".
     */

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_REWRITE_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_collab_rewrite_handler;

    return NGX_OK;
}


static void *
ngx_http_collab_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_collab_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_collab_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mcf->redis_addr = { 0, NULL };
     *     mcf->redis_password = { 0, NULL };
     *     mcf->enabled = 0;
     */

    mcf->redis_db = 0;
    mcf->redis_timeout = NGX_CONF_UNSET_MSEC;
    mcf->redis_connect_timeout = NGX_CONF_UNSET_MSEC;
    mcf->redis_max_inflight = NGX_CONF_UNSET_UINT;
    mcf->redis_session_inflight = NGX_CONF_UNSET_UINT;
    mcf->presence_ttl = NGX_CONF_UNSET_MSEC;
    mcf->ack_timeout = NGX_CONF_UNSET_MSEC;
    mcf->replica_lag = NGX_CONF_UNSET_MSEC;

    return mcf;
}


static char *
ngx_http_collab_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_collab_main_conf_t *mcf = conf;

    ngx_conf_init_msec_value(mcf->redis_timeout, 2000);
    ngx_conf_init_msec_value(mcf->redis_connect_timeout, 2000);
    ngx_conf_init_uint_value(mcf->redis_max_inflight, 10000);
    /* a session's share: a flooder cannot fill the pipeline of everyone */
    ngx_conf_init_uint_value(mcf->redis_session_inflight,
                             ngx_max(4, mcf->redis_max_inflight / 8));
    ngx_conf_init_msec_value(mcf->presence_ttl, 30000);
    ngx_conf_init_msec_value(mcf->ack_timeout, 1000);
    ngx_conf_init_msec_value(mcf->replica_lag, 500);

    if (mcf->ack_replicas && mcf->ack_timeout * 2 > mcf->redis_timeout) {
        /* later commands wait behind a WAIT: the watchdog must not fire */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_redis\" ack_timeout=%M is more than "
                           "half of timeout=%M", mcf->ack_timeout,
                           mcf->redis_timeout);
        return NGX_CONF_ERROR;
    }

    if (mcf->presence_ttl < 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_presence_ttl\" must be at least 1s");
        return NGX_CONF_ERROR;
    }

    if (mcf->enabled && mcf->limit_zone == NULL) {
        /* POST is limited per user or address by default: it needs a table */
        if (ngx_http_collab_limit_zone_add(cf, mcf, 1024 * 1024) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        mcf->limit_implicit = 1;
    }

    if ((mcf->enabled || mcf->metrics)
        && ngx_http_collab_metrics_zone_add(cf, mcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_collab_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_collab_loc_conf_t  *lcf;

    lcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_collab_loc_conf_t));
    if (lcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     lcf->doc = NULL;
     *     lcf->user = NULL;
     */

    lcf->enable = NGX_CONF_UNSET;
    lcf->auth = NGX_CONF_UNSET_UINT;
    lcf->allow_origin = NGX_CONF_UNSET_PTR;
    lcf->max_message = NGX_CONF_UNSET_SIZE;
    lcf->max_message_set = NGX_CONF_UNSET;
    lcf->send_queue_set = NGX_CONF_UNSET;
    lcf->max_docs = NGX_CONF_UNSET_UINT;
    lcf->send_queue = NGX_CONF_UNSET_SIZE;
    lcf->presence_rate = NGX_CONF_UNSET_UINT;
    lcf->presence_max = NGX_CONF_UNSET_UINT;
    lcf->presence_size = NGX_CONF_UNSET_SIZE;
    lcf->ping = NGX_CONF_UNSET_MSEC;
    lcf->merge = NGX_CONF_UNSET_UINT;
    lcf->protocol = NGX_CONF_UNSET_UINT;
    lcf->yjs_compact = NGX_CONF_UNSET;
    lcf->state_max = NGX_CONF_UNSET_SIZE;
    lcf->conflict = NGX_CONF_UNSET_UINT;
    lcf->rate = NGX_CONF_UNSET_UINT;
    lcf->burst = NGX_CONF_UNSET_UINT;
    lcf->max_inflight = NGX_CONF_UNSET_UINT;
    lcf->default_role = NGX_CONF_UNSET_UINT;
    lcf->rate_bytes = NGX_CONF_UNSET_SIZE;
    lcf->user_rate = NGX_CONF_UNSET_UINT;
    lcf->user_burst = NGX_CONF_UNSET_UINT;
    lcf->max_user_sessions = NGX_CONF_UNSET_UINT;
    lcf->max_doc_sessions = NGX_CONF_UNSET_UINT;
    lcf->send_timeout = NGX_CONF_UNSET_MSEC;
    lcf->jwt_keys = NGX_CONF_UNSET_PTR;
    lcf->jwt_leeway = NGX_CONF_UNSET_MSEC;
    lcf->jwt_require_exp = NGX_CONF_UNSET;
    lcf->auth_timeout = NGX_CONF_UNSET_MSEC;
    lcf->post_max_messages = NGX_CONF_UNSET_UINT;
    lcf->log_keep = NGX_CONF_UNSET_UINT;
    lcf->op_window = NGX_CONF_UNSET_MSEC;
    lcf->doc_expire = NGX_CONF_UNSET_MSEC;

    return lcf;
}


static char *
ngx_http_collab_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_collab_loc_conf_t *prev = parent;
    ngx_http_collab_loc_conf_t *conf = child;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);

    ngx_http_collab_merge_session(prev, conf);
    ngx_http_collab_merge_limits(prev, conf);
    ngx_http_collab_merge_auth(prev, conf);

    if (conf->enable == 1 && conf->protocol == NGX_HTTP_COLLAB_PROTOCOL_YJS
        && (conf->merge != NGX_HTTP_COLLAB_MERGE_NONE
            || conf->conflict != NGX_HTTP_COLLAB_CONFLICT_ACCEPT))
    {
        /* Yjs updates are not JSON patches and have no base */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_protocol y-websocket\" needs "
                           "\"collab_merge none\" and "
                           "\"collab_conflict accept\"");
        return NGX_CONF_ERROR;
    }

    if (ngx_http_collab_check_limits(cf, conf) != NGX_OK
        || ngx_http_collab_check_auth(cf, conf) != NGX_OK
        || ngx_http_collab_check_main(cf, conf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* what a session is and how it is served */

static void
ngx_http_collab_merge_session(ngx_http_collab_loc_conf_t *prev,
    ngx_http_collab_loc_conf_t *conf)
{
    if (conf->doc == NULL) {
        conf->doc = prev->doc;
    }

    if (conf->user == NULL) {
        conf->user = prev->user;
    }

    ngx_conf_merge_ptr_value(conf->allow_origin, prev->allow_origin, NULL);

    /* set here or above (the http level itself is never merged) */
    conf->max_message_set = (conf->max_message != NGX_CONF_UNSET_SIZE
                             || prev->max_message_set == 1
                             || (prev->max_message_set == NGX_CONF_UNSET
                                 && prev->max_message
                                    != NGX_CONF_UNSET_SIZE));
    conf->send_queue_set = (conf->send_queue != NGX_CONF_UNSET_SIZE
                            || prev->send_queue_set == 1
                            || (prev->send_queue_set == NGX_CONF_UNSET
                                && prev->send_queue != NGX_CONF_UNSET_SIZE));

    ngx_conf_merge_uint_value(conf->max_docs, prev->max_docs, 16);
    ngx_conf_merge_msec_value(conf->ping, prev->ping, 25000);
    ngx_conf_merge_uint_value(conf->presence_rate, prev->presence_rate, 10);
    ngx_conf_merge_uint_value(conf->presence_max, prev->presence_max, 100);
    ngx_conf_merge_size_value(conf->presence_size, prev->presence_size,
                              1024);
    ngx_conf_merge_uint_value(conf->merge, prev->merge,
                              NGX_HTTP_COLLAB_MERGE_NONE);
    ngx_conf_merge_uint_value(conf->protocol, prev->protocol,
                              NGX_HTTP_COLLAB_PROTOCOL_V1);

    /*
     * A Yjs provider uploads its whole document on every connect, relayed
     * in base64: larger defaults on a y-websocket location.
     */

    if (!conf->send_queue_set
        && conf->protocol == NGX_HTTP_COLLAB_PROTOCOL_YJS)
    {
        conf->send_queue = 1024 * 1024;

    } else {
        ngx_conf_merge_size_value(conf->send_queue, prev->send_queue,
                                  256 * 1024);
    }

    if (!conf->max_message_set
        && conf->protocol == NGX_HTTP_COLLAB_PROTOCOL_YJS)
    {
        conf->max_message = conf->send_queue / 2;

    } else {
        ngx_conf_merge_size_value(conf->max_message, prev->max_message,
                                  64 * 1024);
    }
    ngx_conf_merge_value(conf->yjs_compact, prev->yjs_compact, 0);
    ngx_conf_merge_size_value(conf->state_max, prev->state_max, 64 * 1024);
    ngx_conf_merge_uint_value(conf->conflict, prev->conflict,
                              NGX_HTTP_COLLAB_CONFLICT_ACCEPT);
    ngx_conf_merge_msec_value(conf->send_timeout, prev->send_timeout, 30000);
    ngx_conf_merge_uint_value(conf->post_max_messages,
                              prev->post_max_messages, 100);

    /* count and age are one directive */
    if (conf->log_keep == NGX_CONF_UNSET_UINT) {
        conf->log_keep = prev->log_keep;
        conf->log_age = prev->log_age;
    }

    ngx_conf_merge_uint_value(conf->log_keep, prev->log_keep, 0);
    ngx_conf_merge_msec_value(conf->op_window, prev->op_window,
                              24 * 60 * 60 * 1000);
    ngx_conf_merge_msec_value(conf->doc_expire, prev->doc_expire, 0);
}


/* rates, session counts and in-flight commands; needs max_message merged */

static void
ngx_http_collab_merge_limits(ngx_http_collab_loc_conf_t *prev,
    ngx_http_collab_loc_conf_t *conf)
{
    /* a rate is inherited with its burst and bytes, as one directive */

    if (conf->rate == NGX_CONF_UNSET_UINT) {
        conf->rate = prev->rate;
        conf->burst = prev->burst;
        conf->rate_bytes = prev->rate_bytes;
    }

    /* safe for an internet-facing edge unless told otherwise */
    ngx_conf_merge_uint_value(conf->rate, prev->rate, 50000);
    ngx_conf_merge_uint_value(conf->burst, prev->burst, 100);
    ngx_conf_merge_size_value(conf->rate_bytes, prev->rate_bytes,
                              1024 * 1024);

    if (conf->user_rate == NGX_CONF_UNSET_UINT) {
        conf->user_rate = prev->user_rate;
        conf->user_burst = prev->user_burst;
    }

    ngx_conf_merge_uint_value(conf->user_rate, prev->user_rate, 0);
    ngx_conf_merge_uint_value(conf->user_burst, prev->user_burst, 0);
    ngx_conf_merge_uint_value(conf->max_user_sessions,
                              prev->max_user_sessions, 0);
    ngx_conf_merge_uint_value(conf->max_doc_sessions,
                              prev->max_doc_sessions, 0);

    conf->rate_bytes_burst = ngx_max(2 * conf->rate_bytes, conf->max_message);
    ngx_conf_merge_uint_value(conf->max_inflight, prev->max_inflight, 64);
}


static void
ngx_http_collab_merge_auth(ngx_http_collab_loc_conf_t *prev,
    ngx_http_collab_loc_conf_t *conf)
{
    ngx_conf_merge_uint_value(conf->auth, prev->auth,
                              NGX_HTTP_COLLAB_AUTH_OFF);

    /* left unset: see ngx_http_collab_default_role() */
    if (conf->default_role == NGX_CONF_UNSET_UINT) {
        conf->default_role = prev->default_role;
    }

    ngx_conf_merge_ptr_value(conf->jwt_keys, prev->jwt_keys, NULL);
    /* opt-in: a cookie is sent by any page that opens a socket */
    ngx_conf_merge_str_value(conf->jwt_cookie, prev->jwt_cookie, "");

    if (conf->jwt_cookie.len == 3
        && ngx_strncmp(conf->jwt_cookie.data, "off", 3) == 0)
    {
        conf->jwt_cookie.len = 0;
    }

    ngx_conf_merge_value(conf->jwt_require_exp, prev->jwt_require_exp, 1);
    ngx_conf_merge_msec_value(conf->jwt_leeway, prev->jwt_leeway, 30000);
    ngx_conf_merge_str_value(conf->jwt_issuer, prev->jwt_issuer, "");
    ngx_conf_merge_str_value(conf->jwt_audience, prev->jwt_audience, "");
    ngx_conf_merge_msec_value(conf->auth_timeout, prev->auth_timeout, 5000);
    ngx_conf_merge_str_value(conf->admin_key, prev->admin_key, "");
}


static ngx_int_t
ngx_http_collab_check_limits(ngx_conf_t *cf, ngx_http_collab_loc_conf_t *conf)
{
    if (conf->max_message < 128) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_max_message\" must be at least 128");
        return NGX_ERROR;
    }

    if (conf->send_queue < conf->max_message) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_send_queue\" must not be less than "
                           "\"collab_max_message\"");
        return NGX_ERROR;
    }

    if (conf->ping < 100) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_ping\" must be at least 100ms");
        return NGX_ERROR;
    }

    if (conf->max_inflight == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_max_inflight\" must be at least 1");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_collab_check_auth(ngx_conf_t *cf, ngx_http_collab_loc_conf_t *conf)
{
    if (conf->auth == NGX_HTTP_COLLAB_AUTH_VARIABLE && conf->user == NULL
        && conf->enable == 1)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_auth variable\" requires "
                           "\"collab_user\"");
        return NGX_ERROR;
    }

    if (conf->auth == NGX_HTTP_COLLAB_AUTH_JWT && conf->enable == 1
        && conf->jwt_keys == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_auth jwt\" requires "
                           "\"collab_jwt_key\"");
        return NGX_ERROR;
    }

    return ngx_http_collab_cookie_check(cf, conf);
}


/* what a location needs from the http block */

static ngx_int_t
ngx_http_collab_check_main(ngx_conf_t *cf, ngx_http_collab_loc_conf_t *conf)
{
    ngx_http_collab_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_collab_module);

    if ((conf->user_rate || conf->max_user_sessions
         || conf->max_doc_sessions)
        && conf->enable == 1
        && (mcf->limit_zone == NULL || mcf->limit_implicit))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_user_rate\" and "
                           "\"collab_max_sessions_per_*\" require "
                           "\"collab_limit_zone\" in the http block");
        return NGX_ERROR;
    }

    if ((conf->enable == 1 || conf->admin) && mcf->redis_addr.data == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" requires \"collab_redis\" "
                           "in the http block",
                           conf->admin ? "collab_admin" : "collab");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A browser sends the cookie with a WebSocket, an EventSource or a form
 * opened by any page: a cookie token without an Origin allowlist lets any
 * site act as the user (cross-site WebSocket hijacking).
 */

static ngx_int_t
ngx_http_collab_cookie_check(ngx_conf_t *cf, ngx_http_collab_loc_conf_t *conf)
{
    ngx_str_t   *pat;
    ngx_uint_t   i, any;

    if ((conf->enable != 1 && !conf->admin)
        || conf->auth != NGX_HTTP_COLLAB_AUTH_JWT
        || conf->jwt_cookie.len == 0)
    {
        return NGX_OK;
    }

    any = (conf->allow_origin == NULL);
    pat = any ? NULL : conf->allow_origin->elts;

    for (i = 0; !any && i < conf->allow_origin->nelts; i++) {
        any = (pat[i].len == 1 && pat[i].data[0] == '*');
    }

    if (any) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_jwt_cookie %V\" requires "
                           "\"collab_allow_origin\" with the origins of the "
                           "application, not \"*\": any site could "
                           "otherwise act as the user; or use "
                           "\"collab_jwt_cookie off\"", &conf->jwt_cookie);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_collab_init_process(ngx_cycle_t *cycle)
{
    ngx_connection_t             *c;
    ngx_http_collab_worker_t     *w;
    ngx_http_collab_main_conf_t  *mcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_collab_module);
    if (mcf == NULL) {
        return NGX_OK;
    }

    ngx_http_collab_metrics_init_process(mcf, cycle->log);

    if (!mcf->enabled) {
        return NGX_OK;
    }

    w = ngx_pcalloc(cycle->pool, sizeof(ngx_http_collab_worker_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    w->mcf = mcf;
    w->log = cycle->log;

    ngx_queue_init(&w->sessions);
    ngx_rbtree_init(&w->docs, &w->sentinel, ngx_str_rbtree_insert_value);

    w->recv_size = 64 * 1024;
    w->recv_buf = ngx_palloc(cycle->pool, w->recv_size);
    if (w->recv_buf == NULL) {
        return NGX_ERROR;
    }

    /*
     * An idle pseudo-connection: on reload and quit nginx calls the read
     * handler of idle connections, which is our cue to close every session
     * with 1001 so that clients move to the new workers.
     */

    c = ngx_get_connection((ngx_socket_t) -2, cycle->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->idle = 1;
    c->read->handler = ngx_http_collab_watcher_handler;
    c->read->log = cycle->log;
    c->write->log = cycle->log;
    c->data = w;
    w->watcher = c;

    w->retry.handler = ngx_http_collab_doc_retry_handler;
    w->retry.data = w;
    w->retry.log = cycle->log;
    w->retry.cancelable = 1;

    ngx_http_collab_worker = w;

    ngx_http_collab_presence_init(cycle);

    if (ngx_http_collab_redis_init(cycle, &w->cmd, mcf, 0, "command")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_collab_redis_init(cycle, &w->sub, mcf, 1, "subscriber")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (mcf->replica) {
        /* two more, to the replica that serves reads while it can */
        if (ngx_http_collab_replica_init(cycle, mcf) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (mcf->cluster_seeds) {
        /* the two above stay unconnected: each primary has a pair */
        if (ngx_http_collab_cluster_init(cycle, mcf) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (mcf->sentinel_master.len) {
        /* the two above wait for the primary that this one learns */
        w->watch.sentinel = 1;
        w->watch.next_sentinel = ngx_worker;

        if (ngx_http_collab_redis_init(cycle, &w->watch, mcf, 0,
                                       "sentinel")
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_collab_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_collab_worker_t  *w;

    ngx_http_collab_metrics_exit_process();

    w = ngx_http_collab_worker;
    if (w == NULL) {
        return;
    }

    if (w->retry.timer_set) {
        ngx_del_timer(&w->retry);
    }

    ngx_http_collab_presence_exit();

    ngx_http_collab_redis_exit(&w->cmd);
    ngx_http_collab_redis_exit(&w->sub);

    if (w->watch.sentinel) {
        ngx_http_collab_redis_exit(&w->watch);
    }

    if (w->replica) {
        ngx_http_collab_replica_exit();
    }

    if (w->cluster) {
        ngx_http_collab_cluster_exit();
    }

    if (w->watcher) {
        w->watcher->fd = (ngx_socket_t) -1;
        ngx_free_connection(w->watcher);
        w->watcher = NULL;
    }

    ngx_http_collab_worker = NULL;
}


static void
ngx_http_collab_watcher_handler(ngx_event_t *ev)
{
    ngx_connection_t  *c;

    c = ev->data;

    if (!c->close) {
        return;
    }

    c->close = 0;

    ngx_log_error(NGX_LOG_INFO, ev->log, 0,
                  "collab: worker is shutting down, closing sessions");

    ngx_http_collab_session_shutdown_all();
}
