
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * Helpers shared by the transports, the protocol and the configuration
 * handlers: request headers, origin and document name checks, log escaping,
 * and reading a key file.
 */


ngx_int_t
ngx_http_collab_origin_allowed(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf)
{
    size_t            n;
    ngx_str_t        *pat, origin;
    ngx_uint_t        i;
    ngx_table_elt_t  *h;

    if (lcf->allow_origin == NULL) {
        return 1;
    }

    ngx_str_null(&origin);

    h = ngx_http_collab_header(r, "Origin", 6);

    if (h) {
        origin = h->value;
    }

    /* non-browser clients send no Origin; browsers always do */

    if (origin.len == 0) {
        return 1;
    }

    pat = lcf->allow_origin->elts;

    for (i = 0; i < lcf->allow_origin->nelts; i++) {

        if (pat[i].len == 1 && pat[i].data[0] == '*') {
            return 1;
        }

        if (pat[i].len > 2 && pat[i].data[0] == '*' && pat[i].data[1] == '.')
        {
            /* "*.example.com" matches "https://a.b.example.com" */

            n = pat[i].len - 1;

            if (origin.len > n
                && ngx_strncasecmp(origin.data + origin.len - n,
                                   pat[i].data + 1, n) == 0
                && ngx_strlchr(origin.data, origin.data + origin.len - n,
                               '/') != NULL)
            {
                return 1;
            }

            continue;
        }

        if (pat[i].len == origin.len
            && ngx_strncasecmp(pat[i].data, origin.data, origin.len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


ngx_str_t *
ngx_http_collab_log_escape(ngx_str_t *dst, u_char *buf, ngx_str_t *src)
{
    u_char        c, *p, *end;
    size_t        i;
    static u_char  hex[] = "0123456789ABCDEF";

    /* the room for "..." when the string is cut */
    end = buf + NGX_HTTP_COLLAB_LOG_ESC - 3;

    for (p = buf, i = 0; i < src->len; i++) {
        c = src->data[i];

        if (c >= 0x20 && c <= 0x7e && c != '"' && c != '\\') {
            if (p + 1 > end) {
                p = ngx_cpymem(p, "...", 3);
                break;
            }

            *p++ = c;
            continue;
        }

        if (p + 4 > end) {
            p = ngx_cpymem(p, "...", 3);
            break;
        }

        *p++ = '\\';
        *p++ = 'x';
        *p++ = hex[c >> 4];
        *p++ = hex[c & 0xf];
    }

    dst->data = buf;
    dst->len = p - buf;

    return dst;
}


/* a small file read whole at configuration time: keys and secrets */

ngx_int_t
ngx_http_collab_conf_read_file(ngx_conf_t *cf, ngx_str_t *name, size_t max,
    ngx_pool_t *pool, ngx_str_t *out)
{
    ssize_t          n;
    ngx_file_t       f;
    ngx_file_info_t  fi;

    if (ngx_conf_full_name(cf->cycle, name, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_memzero(&f, sizeof(ngx_file_t));

    f.name = *name;
    f.log = cf->log;
    f.fd = ngx_open_file(name->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (f.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", name);
        return NGX_ERROR;
    }

    if (ngx_fd_info(f.fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) == 0 || (size_t) ngx_file_size(&fi) > max)
    {
        ngx_close_file(f.fd);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "file \"%V\" is empty or larger than %uz bytes",
                           name, max);
        return NGX_ERROR;
    }

    out->data = ngx_pnalloc(pool, ngx_file_size(&fi) + 1);
    if (out->data == NULL) {
        ngx_close_file(f.fd);
        return NGX_ERROR;
    }

    n = ngx_read_file(&f, out->data, ngx_file_size(&fi), 0);

    ngx_close_file(f.fd);

    if (n != ngx_file_size(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cannot read \"%V\"", name);
        return NGX_ERROR;
    }

    out->len = n;

    return NGX_OK;
}


/* a request header nginx does not keep a pointer to */

ngx_table_elt_t *
ngx_http_collab_header(ngx_http_request_t *r, const char *name, size_t len)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i];
        }
    }
}


ngx_int_t
ngx_http_collab_doc_id_valid(u_char *p, size_t len)
{
    u_char  *last;

    if (len == 0 || len > NGX_HTTP_COLLAB_DOC_MAX) {
        return 0;
    }

    for (last = p + len; p < last; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
            || (*p >= '0' && *p <= '9')
            || *p == '.' || *p == '_' || *p == ':' || *p == '-')
        {
            continue;
        }

        return 0;
    }

    return 1;
}
