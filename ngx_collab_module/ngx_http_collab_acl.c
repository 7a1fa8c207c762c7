
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * Roles.  The effective role on a document is the highest of the token's
 * grant for it and, from the ACL document, the entries of the user and of
 * the user's groups and the ACL's default; without an ACL document,
 * collab_default_role stands in for it.  The store functions compute the
 * same in Redis for every read and write, which is what makes a revoked
 * user's edit impossible to store; the copy here serves the quick "nack
 * forbidden" and the re-evaluation of live sessions when an ACL changes.
 */


#define NGX_HTTP_COLLAB_DENY_PER_SEC     10
#define NGX_HTTP_COLLAB_ACL_BACKOFF_MIN  100
#define NGX_HTTP_COLLAB_ACL_BACKOFF_MAX  5000


static ngx_str_t  ngx_http_collab_role_names[] = {
    ngx_string("none"),
    ngx_string("viewer"),
    ngx_string("commenter"),
    ngx_string("editor"),
    ngx_string("owner")
};


static ngx_uint_t ngx_http_collab_acl_rank(json_t *v);
static ngx_int_t ngx_http_collab_acl_match(const char *pattern,
    ngx_str_t *doc);
static void ngx_http_collab_acl_failed(ngx_http_collab_doc_t *doc);
static void ngx_http_collab_acl_retry_handler(ngx_event_t *ev);
static void ngx_http_collab_acl_sub_update(ngx_http_collab_sub_t *sub,
    ngx_uint_t notice);


/*
 * Unset, it depends on the collab_auth of the location itself, which a
 * merge at an outer level cannot know.
 */

ngx_uint_t
ngx_http_collab_default_role(ngx_http_collab_loc_conf_t *lcf)
{
    if (lcf->default_role != NGX_CONF_UNSET_UINT) {
        return lcf->default_role;
    }

    return lcf->auth == NGX_HTTP_COLLAB_AUTH_OFF ? NGX_HTTP_COLLAB_ROLE_EDITOR
                                                 : NGX_HTTP_COLLAB_ROLE_NONE;
}


ngx_str_t *
ngx_http_collab_role_name(ngx_uint_t role)
{
    if (role > NGX_HTTP_COLLAB_ROLE_OWNER) {
        role = NGX_HTTP_COLLAB_ROLE_OWNER;
    }

    return &ngx_http_collab_role_names[role];
}


ngx_int_t
ngx_http_collab_role_parse(u_char *p, size_t len)
{
    ngx_uint_t  i;

    for (i = 0; i <= NGX_HTTP_COLLAB_ROLE_OWNER; i++) {
        if (ngx_http_collab_role_names[i].len == len
            && ngx_strncmp(ngx_http_collab_role_names[i].data, p, len) == 0)
        {
            return i;
        }
    }

    return NGX_ERROR;
}


static ngx_uint_t
ngx_http_collab_acl_rank(json_t *v)
{
    ngx_int_t  r;

    if (!json_is_string(v)) {
        return NGX_HTTP_COLLAB_ROLE_NONE;
    }

    r = ngx_http_collab_role_parse((u_char *) json_string_value(v),
                                   json_string_length(v));

    return r == NGX_ERROR ? NGX_HTTP_COLLAB_ROLE_NONE : (ngx_uint_t) r;
}


/* "doc", "prefix*" or "*" */

static ngx_int_t
ngx_http_collab_acl_match(const char *pattern, ngx_str_t *doc)
{
    size_t  len;

    len = ngx_strlen(pattern);

    if (len && pattern[len - 1] == '*') {
        return doc->len >= len - 1
               && ngx_strncmp(doc->data, pattern, len - 1) == 0;
    }

    return len == doc->len && ngx_strncmp(doc->data, pattern, len) == 0;
}


/* the token's "collab" claim: {"pattern": "role", ...} */

ngx_uint_t
ngx_http_collab_acl_grant(ngx_http_collab_session_t *s, ngx_str_t *doc)
{
    json_t      *grants, *v;
    ngx_uint_t   role, r;
    const char  *pattern;

    if (s->claims == NULL) {
        return NGX_HTTP_COLLAB_ROLE_NONE;
    }

    grants = json_object_get(s->claims, "collab");
    if (!json_is_object(grants)) {
        return NGX_HTTP_COLLAB_ROLE_NONE;
    }

    role = NGX_HTTP_COLLAB_ROLE_NONE;

    json_object_foreach(grants, pattern, v) {
        if (ngx_http_collab_acl_match(pattern, doc)) {
            r = ngx_http_collab_acl_rank(v);

            if (r > role) {
                role = r;
            }
        }
    }

    return role;
}


ngx_uint_t
ngx_http_collab_acl_role(ngx_http_collab_session_t *s,
    ngx_http_collab_doc_t *doc)
{
    u_char      *p, *last, *start;
    json_t      *users, *groups, *v;
    ngx_str_t    name;
    ngx_uint_t   role, r;

    role = ngx_http_collab_acl_grant(s, &doc->node.str);

    if (doc->acl == NULL) {
        r = ngx_http_collab_default_role(s->conf);
        return r > role ? r : role;
    }

    if (!json_is_object(doc->acl)) {
        /* a broken ACL document grants nothing */
        return role;
    }

    r = ngx_http_collab_acl_rank(json_object_get(doc->acl, "default"));
    role = r > role ? r : role;

    users = json_object_get(doc->acl, "users");

    if (json_is_object(users)) {
        v = json_object_getn(users, (char *) s->user.data, s->user.len);
        r = ngx_http_collab_acl_rank(v);
        role = r > role ? r : role;
    }

    groups = json_object_get(doc->acl, "groups");

    if (json_is_object(groups) && s->groups.len) {
        p = s->groups.data;
        last = p + s->groups.len;

        while (p < last) {
            start = p;

            while (p < last && *p != ',') {
                p++;
            }

            name.data = start;
            name.len = p - start;
            p++;

            v = json_object_getn(groups, (char *) name.data, name.len);
            r = ngx_http_collab_acl_rank(v);
            role = r > role ? r : role;
        }
    }

    return role;
}


/* the raw ACL as the store returned it: NULL for none */

void
ngx_http_collab_acl_set(ngx_http_collab_doc_t *doc, u_char *raw, size_t len)
{
    json_t  *acl;

    if (doc->acl) {
        json_decref(doc->acl);
        doc->acl = NULL;
    }

    if (raw == NULL) {
        return;
    }

    acl = json_loadb((char *) raw, len, 0, NULL);

    if (acl == NULL || !json_is_object(acl)) {
        /* kept as a non-object: nothing but token grants count */

        if (acl) {
            json_decref(acl);
        }

        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "collab: the ACL of \"%V\" is not a JSON object",
                      &doc->node.str);

        acl = json_null();
    }

    doc->acl = acl;
}


/*
 * {"type":"acl"} on the channel: reload the ACL and re-evaluate sessions.
 * Until a reload succeeds the roles are not known and the document
 * delivers nothing (acl_stale, see ngx_http_collab_doc_fanout()); a load
 * that fails is retried with a backoff, and at once when the command
 * connection is ready again.
 */

void
ngx_http_collab_acl_changed(ngx_http_collab_doc_t *doc)
{
    if (!doc->acl_stale) {
        /* the first notice not applied yet: revocations are timed from it */
        doc->acl_notice = ngx_current_msec;
    }

    doc->acl_stale = 1;
    doc->acl_gen++;

    if (doc->acl_cmd) {
        /* a load is on its way; load again when it is back */
        doc->acl_again = 1;
        return;
    }

    if (doc->acl_retry.timer_set) {
        ngx_del_timer(&doc->acl_retry);
    }

    if (ngx_http_collab_store_acl(doc) != NGX_OK) {
        ngx_http_collab_acl_failed(doc);
    }
}


static void
ngx_http_collab_acl_failed(ngx_http_collab_doc_t *doc)
{
    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    if (doc->acl_backoff == 0) {
        /* logged once per outage, not per retry */
        doc->acl_backoff = NGX_HTTP_COLLAB_ACL_BACKOFF_MIN;

        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "collab: the ACL of \"%V\" could not be loaded, "
                      "delivery held until it is", &doc->node.str);
    }

    doc->acl_retry.handler = ngx_http_collab_acl_retry_handler;
    doc->acl_retry.data = doc;
    doc->acl_retry.log = ngx_cycle->log;
    doc->acl_retry.cancelable = 1;

    if (!doc->acl_retry.timer_set) {
        ngx_add_timer(&doc->acl_retry, doc->acl_backoff);
    }

    doc->acl_backoff *= 2;

    if (doc->acl_backoff > NGX_HTTP_COLLAB_ACL_BACKOFF_MAX) {
        doc->acl_backoff = NGX_HTTP_COLLAB_ACL_BACKOFF_MAX;
    }
}


static void
ngx_http_collab_acl_retry_handler(ngx_event_t *ev)
{
    ngx_http_collab_doc_t  *doc;

    doc = ev->data;

    if (doc->acl_stale && doc->acl_cmd == NULL) {
        ngx_http_collab_acl_changed(doc);
    }
}


/* the reply of store_acl */

void
ngx_http_collab_acl_loaded(ngx_http_collab_doc_t *doc,
    ngx_http_collab_acl_load_t *ld)
{
    ngx_uint_t              again;
    ngx_queue_t            *q, *next;
    ngx_http_collab_sub_t  *sub;

    if (ld->status != NGX_OK) {
        if (ld->status == NGX_ERROR) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "collab: loading the ACL of \"%V\" failed: %s",
                          &doc->node.str, ld->error);
        }

        /* retried: the notice may have been the only one */
        doc->acl_again = 0;
        ngx_http_collab_acl_failed(doc);
        return;
    }

    ngx_http_collab_acl_set(doc, ld->raw.data, ld->raw.len);

    doc->acl_known = 1;
    doc->acl_backoff = 0;
    doc->acl_gen++;             /* older replica reads do not apply */

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_ACL_RELOADS);

    /* changed again meanwhile: apply this one, deliver after the next */
    again = doc->acl_again;
    doc->acl_again = 0;
    doc->acl_stale = again;

    /* a revocation may drop the last member: the document stays till the end */

    ngx_http_collab_doc_hold(doc);

    for (q = ngx_queue_head(&doc->subs);
         q != ngx_queue_sentinel(&doc->subs);
         q = next)
    {
        next = ngx_queue_next(q);
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, doc_link);

        ngx_http_collab_acl_sub_update(sub, 1);
    }

    if (!again) {
        ngx_http_collab_doc_acl_known(doc);
    }

    if (ngx_http_collab_doc_release(doc) == NGX_DONE) {
        return;
    }

    if (again) {
        ngx_http_collab_acl_changed(doc);
    }
}


void
ngx_http_collab_acl_reevaluate_session(ngx_http_collab_session_t *s)
{
    ngx_queue_t            *q, *next;
    ngx_http_collab_sub_t  *sub;

    for (q = ngx_queue_head(&s->subs);
         q != ngx_queue_sentinel(&s->subs);
         q = next)
    {
        next = ngx_queue_next(q);
        sub = ngx_queue_data(q, ngx_http_collab_sub_t, session_link);

        ngx_http_collab_acl_sub_update(sub, 0);
    }
}


static void
ngx_http_collab_acl_sub_update(ngx_http_collab_sub_t *sub, ngx_uint_t notice)
{
    ngx_uint_t                  role;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_session_t  *s;

    if (sub->state == NGX_HTTP_COLLAB_SUB_JOINING || !sub->doc->acl_known) {
        /* the read on its way computes the role in Redis */
        return;
    }

    s = sub->session;
    role = ngx_http_collab_acl_role(s, sub->doc);

    if (role == sub->role) {
        return;
    }

    sub->role = role;

    if (notice) {
        ngx_http_collab_metrics_observe(NGX_HTTP_COLLAB_H_REVOCATION,
                                        (uint64_t) (ngx_current_msec
                                                    - sub->doc->acl_notice)
                                        * 1000);
    }

    if (role == NGX_HTTP_COLLAB_ROLE_NONE) {
        ngx_http_collab_doc_revoke(sub);
        return;
    }

    m = ngx_http_collab_msg_build("role", "doc", 'S', &sub->doc->node.str,
                                  "role", 'S',
                                  ngx_http_collab_role_name(role), NULL);
    ngx_http_collab_reply(s, NGX_HTTP_COLLAB_NO_SLOT, m);
}


/* the role a session has on a document it is subscribed to, if any */

ngx_int_t
ngx_http_collab_acl_check(ngx_http_collab_session_t *s, ngx_str_t *doc,
    ngx_uint_t need, const char *action)
{
    ngx_http_collab_doc_t  *d;
    ngx_http_collab_sub_t  *sub;

    sub = ngx_http_collab_doc_find(s, doc);

    if (sub == NULL) {
        /* not a member (a POST): the worker may follow it all the same */
        d = ngx_http_collab_doc_lookup(doc);

        if (d == NULL || !d->subscribed || !d->acl_known || d->acl_cmd
            || ngx_http_collab_acl_role(s, d) >= need)
        {
            /* not known here: the store function decides */
            return NGX_OK;
        }

    } else if (sub->state == NGX_HTTP_COLLAB_SUB_JOINING
               || sub->role >= need)
    {
        return NGX_OK;
    }

    ngx_http_collab_acl_deny(s, doc, action);

    return NGX_DECLINED;
}


/*
 * Appends a denial to collab:{doc}:audit.  A worker writes at most
 * NGX_HTTP_COLLAB_DENY_PER_SEC of them a second, and the store function
 * one a second per document, so a flood of forbidden edits stays a flood
 * of nacks and not of Redis writes.
 */

void
ngx_http_collab_acl_deny(ngx_http_collab_session_t *s, ngx_str_t *doc,
    const char *action)
{
    ngx_http_collab_worker_t  *w;

    w = ngx_http_collab_worker;

    if (w->deny_sec != ngx_time()) {
        w->deny_sec = ngx_time();
        w->deny_count = 0;
    }

    if (w->deny_count++ >= NGX_HTTP_COLLAB_DENY_PER_SEC) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "collab: \"%V\" denied %s on \"%V\"",
                  ngx_http_collab_esc(&s->user), action, doc);

    ngx_http_collab_store_deny(s, doc, action);
}
