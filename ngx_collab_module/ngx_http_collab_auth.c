
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"
#include "ngx_http_collab_jwt.h"


/*
 * Identity: a JWT from the Authorization header, a cookie, the access_token
 * argument or a first "auth" message, or an nginx variable.  Tokens never
 * reach a log: the argument is masked in the request line before anything
 * can log it, and verification errors name the reason only.
 */


static void ngx_http_collab_auth_keys_cleanup(void *data);
static ngx_int_t ngx_http_collab_auth_token(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_str_t *token);
static void ngx_http_collab_auth_mask(ngx_http_request_t *r);
static void ngx_http_collab_auth_expire_handler(ngx_event_t *ev);


/* collab_jwt_key ALG file=PATH [kid=ID] */

char *
ngx_http_collab_auth_jwt_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_loc_conf_t *lcf = conf;

    u_char              *buf;
    char                *kid, *alg;
    size_t               n;
    ngx_str_t           *value, file, key;
    ngx_uint_t           i;
    const char          *err;
    ngx_pool_cleanup_t  *cln;

    value = cf->args->elts;

    if (lcf->jwt_keys == NGX_CONF_UNSET_PTR) {
        lcf->jwt_keys = ngx_http_collab_jwt_keys_create();
        if (lcf->jwt_keys == NULL) {
            return NGX_CONF_ERROR;
        }

        cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (cln == NULL) {
            ngx_http_collab_jwt_keys_free(lcf->jwt_keys);
            return NGX_CONF_ERROR;
        }

        cln->handler = ngx_http_collab_auth_keys_cleanup;
        cln->data = lcf->jwt_keys;
    }

    alg = (char *) value[1].data;
    kid = NULL;
    ngx_str_null(&file);

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "file=", 5) == 0) {
            file.data = value[i].data + 5;
            file.len = value[i].len - 5;
            continue;
        }

        if (ngx_strncmp(value[i].data, "kid=", 4) == 0
            && value[i].len > 4)
        {
            kid = (char *) value[i].data + 4;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (file.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"collab_jwt_key\" needs \"file=\"");
        return NGX_CONF_ERROR;
    }

    if (ngx_http_collab_conf_read_file(cf, &file, 1024 * 1024,
                                       cf->temp_pool, &key)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    buf = key.data;
    n = key.len;

    if (ngx_http_collab_jwt_key_add(lcf->jwt_keys, alg, kid, buf, n, &err)
        != 0)
    {
        /* the buffer is key material: clear it before it goes back */
        ngx_explicit_memzero(buf, n);

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid key in \"%V\" for \"%V\": %s",
                           &file, &value[1], err);
        return NGX_CONF_ERROR;
    }

    ngx_explicit_memzero(buf, n);

    return NGX_CONF_OK;
}


static void
ngx_http_collab_auth_keys_cleanup(void *data)
{
    ngx_http_collab_jwt_keys_free(data);
}


static ngx_int_t
ngx_http_collab_auth_token(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_str_t *token)
{
    ngx_str_t                 v;
    ngx_table_elt_t          *h;
    ngx_http_collab_early_t  *early;

    h = r->headers_in.authorization;

    if (h && h->value.len > 7
        && ngx_strncasecmp(h->value.data, (u_char *) "Bearer ", 7) == 0)
    {
        token->data = h->value.data + 7;
        token->len = h->value.len - 7;

        while (token->len && token->data[0] == ' ') {
            token->data++;
            token->len--;
        }

        return NGX_OK;
    }

    if (lcf->jwt_cookie.len
        && ngx_http_parse_multi_header_lines(&r->headers_in.cookies,
                                             &lcf->jwt_cookie, &v)
           != NGX_DECLINED)
    {
        *token = v;
        return NGX_OK;
    }

    /* taken out of the arguments by ngx_http_collab_auth_early() */

    early = ngx_http_get_module_ctx(r, ngx_http_collab_module);

    if (early && early->token.len) {
        *token = early->token;
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/*
 * Called in the rewrite phase of a collab or admin location, the first
 * phase that knows the location: the access_token argument is copied aside
 * and masked in the request line, the unparsed URI and the arguments,
 * whatever happens next, so that neither the error log's "request:" nor
 * the access log ($request, $request_uri, $args) ever shows it.
 */

ngx_int_t
ngx_http_collab_auth_early(ngx_http_request_t *r)
{
    ngx_str_t                 v;
    ngx_http_collab_early_t  *early;

    if (ngx_http_get_module_ctx(r, ngx_http_collab_module) != NULL) {
        /* done already: the rewrite phase runs again after "rewrite" */
        return NGX_OK;
    }

    if (r->args.len == 0
        || ngx_http_arg(r, (u_char *) "access_token", 12, &v) != NGX_OK)
    {
        return NGX_OK;
    }

    early = ngx_pcalloc(r->pool, sizeof(ngx_http_collab_early_t));
    if (early == NULL) {
        return NGX_ERROR;
    }

    early->token.data = ngx_pnalloc(r->pool, v.len + 1);
    if (early->token.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(early->token.data, v.data, v.len);
    early->token.len = v.len;

    ngx_http_set_ctx(r, early, ngx_http_collab_module);

    ngx_http_collab_auth_mask(r);

    return NGX_OK;
}


/* replaces the access_token value in the request line, URI and arguments */

static void
ngx_http_collab_auth_mask(ngx_http_request_t *r)
{
    u_char     *p, *last, *start;
    ngx_str_t  *s, copy;
    ngx_uint_t  i;

    for (i = 0; i < 3; i++) {
        s = (i == 0) ? &r->request_line
                     : (i == 1) ? &r->unparsed_uri : &r->args;

        if (s->len == 0) {
            continue;
        }

        copy.data = ngx_pnalloc(r->pool, s->len);
        if (copy.data == NULL) {
            continue;
        }

        copy.len = s->len;
        ngx_memcpy(copy.data, s->data, s->len);

        p = copy.data;
        last = p + copy.len;

        while (p < last) {
            p = ngx_strlcasestrn(p, last, (u_char *) "access_token=",
                                 13 - 1);
            if (p == NULL) {
                break;
            }

            if (p != copy.data && p[-1] != '?' && p[-1] != '&') {
                p += 13;
                continue;
            }

            p += 13;
            start = p;

            while (p < last && *p != '&' && *p != ' ') {
                *p++ = 'x';
            }

            if (p - start > 3) {
                /* keep the length out of the log as well */
                ngx_memmove(start + 3, p, last - p);
                copy.len -= (p - start) - 3;
                last = copy.data + copy.len;
                p = start + 3;
            }
        }

        *s = copy;
    }
}


/*
 * Resolves the identity of a new request.  NGX_OK: identity in *claims
 * (jwt) or from the variable; NGX_DECLINED: no token (a WebSocket may send
 * it as its first message); NGX_HTTP_UNAUTHORIZED: a bad token.
 */

ngx_int_t
ngx_http_collab_auth_request(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, json_t **claims)
{
    ngx_str_t    token;
    const char  *err;

    *claims = NULL;

    if (lcf->auth != NGX_HTTP_COLLAB_AUTH_JWT) {
        return NGX_OK;
    }

    if (ngx_http_collab_auth_token(r, lcf, &token) != NGX_OK) {
        return NGX_DECLINED;
    }

    if (ngx_http_collab_auth_verify(lcf, token.data, token.len, claims, &err)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: token rejected: %s", err);
        return NGX_HTTP_UNAUTHORIZED;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_collab_auth_verify(ngx_http_collab_loc_conf_t *lcf, u_char *token,
    size_t len, json_t **claims, const char **err)
{
    json_t                      *sub, *exp;
    ngx_http_collab_jwt_opts_t   opts;

    if (lcf->jwt_keys == NULL) {
        *err = "no keys configured";
        return NGX_ERROR;
    }

    opts.leeway = lcf->jwt_leeway / 1000;
    opts.iss = lcf->jwt_issuer.len ? (char *) lcf->jwt_issuer.data : NULL;
    opts.aud = lcf->jwt_audience.len ? (char *) lcf->jwt_audience.data
                                     : NULL;

    if (ngx_http_collab_jwt_verify(lcf->jwt_keys, (char *) token, len,
                                   ngx_time(), &opts, claims, err)
        != 0)
    {
        return NGX_ERROR;
    }

    sub = json_object_get(*claims, "sub");

    if (!json_is_string(sub) || json_string_length(sub) == 0
        || json_string_length(sub) > 256
        || !ngx_http_collab_utf8_valid((u_char *) json_string_value(sub),
                                       json_string_length(sub)))
    {
        json_decref(*claims);
        *claims = NULL;
        *err = "no usable \"sub\" claim";
        return NGX_ERROR;
    }

    /* a token without exp is valid for ever once it leaks */

    exp = json_object_get(*claims, "exp");

    if (exp == NULL && lcf->jwt_require_exp) {
        json_decref(*claims);
        *claims = NULL;
        *err = "no \"exp\" claim";
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Takes the claims of a verified token over: user, groups, grants and the
 * expiry timer.  A later token must name the same user.
 */

ngx_int_t
ngx_http_collab_auth_apply(ngx_http_collab_session_t *s, json_t *claims)
{
    size_t       n, len;
    u_char      *p;
    json_t      *sub, *groups, *g, *exp;
    ngx_msec_t   delay;
    time_t       at;

    sub = json_object_get(claims, "sub");
    len = json_string_length(sub);

    if (s->authenticated) {
        if (len != s->user.len
            || ngx_memcmp(json_string_value(sub), s->user.data, len) != 0)
        {
            json_decref(claims);
            return NGX_DECLINED;
        }

    } else {
        s->strings = ngx_alloc(len, s->connection->log);
        if (s->strings == NULL) {
            json_decref(claims);
            return NGX_ERROR;
        }

        ngx_memcpy(s->strings, json_string_value(sub), len);
        s->user.data = s->strings;
        s->user.len = len;
    }

    if (s->claims) {
        json_decref(s->claims);
    }

    s->claims = claims;
    s->authenticated = 1;

    /* groups, comma-separated for the store function */

    groups = json_object_get(claims, "groups");
    len = 0;

    for (n = 0; n < json_array_size(groups); n++) {
        g = json_array_get(groups, n);

        if (json_is_string(g)) {
            len += json_string_length(g) + 1;
        }
    }

    if (s->groups.data) {
        ngx_free(s->groups.data);
    }

    s->groups.len = 0;
    s->groups.data = NULL;

    if (len && len < 8192) {
        s->groups.data = ngx_alloc(len, s->connection->log);

        if (s->groups.data) {
            p = s->groups.data;

            for (n = 0; n < json_array_size(groups); n++) {
                g = json_array_get(groups, n);

                if (!json_is_string(g) || json_string_length(g) == 0
                    || ngx_strlchr((u_char *) json_string_value(g),
                                   (u_char *) json_string_value(g)
                                   + json_string_length(g), ',')
                       != NULL)
                {
                    continue;
                }

                if (p != s->groups.data) {
                    *p++ = ',';
                }

                p = ngx_cpymem(p, json_string_value(g),
                               json_string_length(g));
            }

            s->groups.len = p - s->groups.data;
        }
    }

    /* expiry: close with 4401 unless a fresh token comes first */

    if (s->expire.timer_set) {
        ngx_del_timer(&s->expire);
    }

    exp = json_object_get(claims, "exp");

    if (json_is_number(exp)) {
        at = (time_t) json_number_value(exp) + s->conf->jwt_leeway / 1000;
        delay = at > ngx_time() ? (ngx_msec_t) (at - ngx_time()) * 1000 : 1;

        s->expire.handler = ngx_http_collab_auth_expire_handler;
        ngx_add_timer(&s->expire, delay);
    }

    return NGX_OK;
}


static void
ngx_http_collab_auth_expire_handler(ngx_event_t *ev)
{
    ngx_http_collab_session_t  *s;

    s = ev->data;

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  s->authenticated ? "collab: token expired"
                                   : "collab: no \"auth\" message in time");

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_AUTH_FAILURES
                               + (s->authenticated
                                  ? NGX_HTTP_COLLAB_AUTHF_EXPIRED
                                  : NGX_HTTP_COLLAB_AUTHF_TIMEOUT));

    ngx_http_collab_session_close(s, s->authenticated ? 4401 : 4408,
                                  s->authenticated ? "token expired"
                                                   : "authentication timeout");
}


void
ngx_http_collab_auth_wait(ngx_http_collab_session_t *s)
{
    s->expire.handler = ngx_http_collab_auth_expire_handler;
    ngx_add_timer(&s->expire, s->conf->auth_timeout);
}


/* {"type":"auth","token":...} */

void
ngx_http_collab_auth_message(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot)
{
    json_t      *token, *claims;
    ngx_int_t    rc;
    ngx_uint_t   first;
    const char  *err;

    if (s->conf->auth != NGX_HTTP_COLLAB_AUTH_JWT) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  NULL, NULL, "\"auth\" is not expected: "
                                  "this endpoint takes no tokens"));
        return;
    }

    token = json_object_get(obj, "token");

    if (!json_is_string(token)) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  NULL, NULL,
                                  "\"token\" must be a string"));
        return;
    }

    if (ngx_http_collab_auth_verify(s->conf, (u_char *)
                                    json_string_value(token),
                                    json_string_length(token), &claims,
                                    &err)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "collab: token rejected: %s", err);

        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_AUTH_FAILURES
                                   + NGX_HTTP_COLLAB_AUTHF_INVALID);

        if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_WS) {
            ngx_http_collab_session_close(s, 4401, "authentication failed");
            return;
        }

        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error",
                                  "unauthorized", NULL, NULL,
                                  "authentication failed"));
        return;
    }

    first = !s->authenticated;

    rc = ngx_http_collab_auth_apply(s, claims);

    if (rc == NGX_DECLINED) {
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_AUTH_FAILURES
                                   + NGX_HTTP_COLLAB_AUTHF_MISMATCH);
    }

    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_POST) {
        /* a POST answers every message: it keeps the identity it has */
        ngx_http_collab_reply(s, slot,
                              rc == NGX_OK
                              ? ngx_http_collab_msg_build("ok", NULL)
                              : ngx_http_collab_msg_error("error",
                                    rc == NGX_DECLINED ? "unauthorized"
                                                       : "internal",
                                    NULL, NULL, "%s",
                                    rc == NGX_DECLINED
                                    ? "the token names another user"
                                    : "out of memory"));
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_collab_session_close(s, 4401, "the token names another "
                                      "user");
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_collab_session_close(s, 1011, "out of memory");
        return;
    }

    if (first) {
        rc = ngx_http_collab_limit_acquire(s, NULL, &s->limit_slot);

        if (rc == NGX_DECLINED) {
            ngx_http_collab_session_close(s, 4429, "too many sessions");
            return;
        }

        s->counted = (rc == NGX_OK);

        if (!s->metric_session) {
            s->metric_session = 1;
            ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_SESSIONS, 1);
        }
    }

    ngx_http_collab_session_welcome(s);

    if (first) {
        ngx_http_collab_session_authenticated(s);

    } else {
        /* grants may have changed with the new token */
        ngx_http_collab_acl_reevaluate_session(s);
    }
}
