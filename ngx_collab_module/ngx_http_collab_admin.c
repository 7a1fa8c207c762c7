
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/crypto.h>
#include "ngx_http_collab_module.h"


/*
 * The ACL admin endpoint: GET and PUT of collab:{doc}:acl, by the holder
 * of the admin key or by an owner of the document (a token of the
 * location's collab_jwt_key set).  A PUT bumps the version, records who
 * made it in the audit stream and tells every worker of every instance.
 */


static ngx_int_t ngx_http_collab_admin_handler(ngx_http_request_t *r);
static void ngx_http_collab_admin_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_collab_admin_is_admin(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf);
static ngx_int_t ngx_http_collab_admin_validate(json_t *acl,
    const char **err);
static ngx_int_t ngx_http_collab_admin_run(ngx_http_request_t *r,
    ngx_str_t *body);
static void ngx_http_collab_admin_respond(ngx_http_request_t *r,
    ngx_uint_t status, u_char *json, size_t len);


char *
ngx_http_collab_admin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_loc_conf_t *lcf = conf;

    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_collab_main_conf_t  *mcf;

    if (lcf->admin) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "conflicts with another handler of the location";
    }

    lcf->admin = 1;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_collab_module);
    mcf->enabled = 1;

    clcf->handler = ngx_http_collab_admin_handler;

    return NGX_CONF_OK;
}


/* collab_admin_key file=PATH */

char *
ngx_http_collab_admin_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_collab_loc_conf_t *lcf = conf;

    u_char           *p;
    size_t            n;
    ngx_str_t        *value, file, key;

    value = cf->args->elts;

    if (lcf->admin_key.data) {
        return "is duplicate";
    }

    if (ngx_strncmp(value[1].data, "file=", 5) != 0 || value[1].len == 5) {
        return "expects \"file=PATH\"";
    }

    file.data = value[1].data + 5;
    file.len = value[1].len - 5;

    if (ngx_http_collab_conf_read_file(cf, &file, 4096, cf->pool, &key)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    p = key.data;
    n = key.len;

    while (n && (p[n - 1] == '\n' || p[n - 1] == '\r')) {
        n--;
    }

    if (n < 16) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "admin key in \"%V\" is shorter than 16 bytes",
                           &file);
        return NGX_CONF_ERROR;
    }

    lcf->admin_key.data = p;
    lcf->admin_key.len = n;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_collab_admin_handler(ngx_http_request_t *r)
{
    ngx_int_t                    rc;
    ngx_http_collab_loc_conf_t  *lcf;

    if (ngx_http_collab_worker == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_collab_module);

    /* access_token was masked in the rewrite phase */

    if (!ngx_http_collab_origin_allowed(r, lcf)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: origin not allowed");
        return NGX_HTTP_FORBIDDEN;
    }

    if (r->method == NGX_HTTP_GET) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        r->main->count++;

        rc = ngx_http_collab_admin_run(r, NULL);

        if (rc != NGX_OK) {
            ngx_http_finalize_request(r, rc);
        }

        return NGX_DONE;
    }

    if (r->method != NGX_HTTP_PUT) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    if (lcf->admin_key.len == 0 && lcf->auth != NGX_HTTP_COLLAB_AUTH_JWT) {
        return NGX_HTTP_FORBIDDEN;
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_collab_admin_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_collab_admin_body(ngx_http_request_t *r)
{
    u_char       *p;
    size_t        len;
    ngx_int_t     rc;
    ngx_str_t     body;
    ngx_chain_t  *cl;

    if (r->request_body == NULL || r->request_body->bufs == NULL
        || r->request_body->temp_file)
    {
        ngx_http_finalize_request(r, r->request_body
                                     && r->request_body->temp_file
                                     ? NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                                     : NGX_HTTP_BAD_REQUEST);
        return;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += cl->buf->last - cl->buf->pos;
    }

    body.data = ngx_pnalloc(r->pool, len + 1);
    if (body.data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = body.data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    body.len = len;

    rc = ngx_http_collab_admin_run(r, &body);

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, rc);
    }
}


static ngx_int_t
ngx_http_collab_admin_is_admin(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf)
{
    ngx_str_t         key;
    ngx_table_elt_t  *h;

    h = r->headers_in.authorization;

    if (lcf->admin_key.len == 0 || h == NULL || h->value.len < 7
        || ngx_strncasecmp(h->value.data, (u_char *) "Bearer ", 7) != 0)
    {
        return 0;
    }

    key.data = h->value.data + 7;
    key.len = h->value.len - 7;

    return key.len == lcf->admin_key.len
           && CRYPTO_memcmp(key.data, lcf->admin_key.data, key.len) == 0;
}


static ngx_int_t
ngx_http_collab_admin_validate(json_t *acl, const char **err)
{
    json_t      *v, *map, *role;
    const char  *name, *key;

    if (!json_is_object(acl)) {
        *err = "the ACL must be a JSON object";
        return NGX_ERROR;
    }

    v = json_object_get(acl, "default");

    if (v && (!json_is_string(v)
              || ngx_http_collab_role_parse((u_char *) json_string_value(v),
                                            json_string_length(v))
                 == NGX_ERROR))
    {
        *err = "\"default\" must be a role";
        return NGX_ERROR;
    }

    v = json_object_get(acl, "version");

    if (v && !json_is_integer(v)) {
        *err = "\"version\" must be an integer";
        return NGX_ERROR;
    }

    for (name = "users"; name; name = (name[0] == 'u') ? "groups" : NULL) {
        map = json_object_get(acl, name);

        if (map == NULL) {
            continue;
        }

        if (!json_is_object(map)) {
            *err = "\"users\" and \"groups\" must be objects";
            return NGX_ERROR;
        }

        json_object_foreach(map, key, role) {
            if (!json_is_string(role)
                || ngx_http_collab_role_parse((u_char *)
                                              json_string_value(role),
                                              json_string_length(role))
                   == NGX_ERROR)
            {
                *err = "every entry must be one of none, viewer, "
                       "commenter, editor, owner";
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/* body NULL: GET */

static ngx_int_t
ngx_http_collab_admin_run(ngx_http_request_t *r, ngx_str_t *body)
{
    json_t                      *acl, *v;
    int64_t                      version, *vp;
    ngx_int_t                    rc, status, admin;
    ngx_str_t                    doc;
    const char                  *err;
    ngx_http_collab_session_t   *s;
    ngx_http_collab_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_collab_module);

    if (ngx_http_arg(r, (u_char *) "doc", 3, &doc) != NGX_OK
        || !ngx_http_collab_doc_id_valid(doc.data, doc.len))
    {
        ngx_http_collab_admin_respond(r, NGX_HTTP_BAD_REQUEST,
                                      (u_char *) "{\"error\":\"invalid\","
                                      "\"message\":\"?doc= must be a "
                                      "document id\"}", 0);
        return NGX_OK;
    }

    admin = ngx_http_collab_admin_is_admin(r, lcf);

    if (!admin && lcf->auth != NGX_HTTP_COLLAB_AUTH_JWT) {
        return NGX_HTTP_UNAUTHORIZED;
    }

    /* the admin key is no token: its session skips the token check */

    s = ngx_http_collab_session_create(r, lcf,
                                       admin ? NGX_HTTP_COLLAB_TRANSPORT_ADMIN
                                             : NGX_HTTP_COLLAB_TRANSPORT_POST,
                                       &status);
    if (s == NULL) {
        return status;
    }

    if (!s->authenticated) {
        return NGX_HTTP_UNAUTHORIZED;
    }

    vp = NULL;

    if (body) {
        acl = json_loadb((char *) body->data, body->len,
                         JSON_REJECT_DUPLICATES, NULL);

        if (acl == NULL
            || ngx_http_collab_admin_validate(acl, &err) != NGX_OK)
        {
            if (acl == NULL) {
                err = "the body is not JSON";

            } else {
                json_decref(acl);
            }

            ngx_http_collab_admin_respond(r, NGX_HTTP_BAD_REQUEST,
                                          (u_char *) err, 0);
            return NGX_OK;
        }

        v = json_object_get(acl, "version");

        if (v) {
            version = json_integer_value(v);
            vp = &version;
        }

        json_decref(acl);
    }

    rc = ngx_http_collab_store_acl_admin(s, &doc, admin, vp, body);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    return NGX_OK;
}


/* the reply of store_acl_admin */

void
ngx_http_collab_admin_done(ngx_http_collab_session_t *s,
    ngx_http_collab_acl_admin_t *res)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = s->request;
    c = r->connection;

    switch (res->status) {

    case NGX_AGAIN:
        ngx_http_finalize_request(r, NGX_HTTP_SERVICE_UNAVAILABLE);
        break;

    case NGX_ERROR:
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "collab: ACL admin command failed: %s", res->error);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        break;

    case NGX_OK:
        if (res->acl.data) {
            ngx_http_collab_admin_respond(r, NGX_HTTP_OK, res->acl.data,
                                          res->acl.len);

        } else {
            ngx_http_collab_admin_respond(r, NGX_HTTP_NOT_FOUND,
                                          (u_char *) "{\"error\":"
                                          "\"not_found\"}", 0);
        }

        break;

    default: /* NGX_DECLINED */
        if (res->conflict) {
            ngx_http_collab_admin_respond(r, NGX_HTTP_CONFLICT,
                                          (u_char *) "{\"error\":"
                                          "\"conflict\",\"message\":"
                                          "\"the ACL changed: GET it and "
                                          "retry\"}", 0);

        } else {
            ngx_http_collab_admin_respond(r, NGX_HTTP_FORBIDDEN,
                                          (u_char *) "{\"error\":"
                                          "\"forbidden\"}", 0);
        }

        break;
    }

    ngx_http_run_posted_requests(c);
}


/* len 0: a NUL-ended text; not JSON yet when it does not start with "{" */

static void
ngx_http_collab_admin_respond(ngx_http_request_t *r, ngx_uint_t status,
    u_char *json, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (len == 0) {
        len = ngx_strlen(json);
    }

    b = ngx_create_temp_buf(r->pool, 6 * len + 64);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (json[0] == '{') {
        b->last = ngx_cpymem(b->last, json, len);

    } else {
        b->last = ngx_cpymem(b->last, "{\"error\":\"invalid\",\"message\":\"",
                             sizeof("{\"error\":\"invalid\",\"message\":\"")
                             - 1);
        b->last = (u_char *) ngx_escape_json(b->last, json, len);
        *b->last++ = '"';
        *b->last++ = '}';
    }

    *b->last++ = '\n';
    b->last_buf = 1;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));
}
