
/*
 * Copyright (C) ngx_collab_module authors
 */


#ifndef _NGX_HTTP_COLLAB_CURSOR_H_INCLUDED_
#define _NGX_HTTP_COLLAB_CURSOR_H_INCLUDED_


/*
 * The resume cursor of an event stream: Last-Event-ID "EPOCH:SEQ" (or
 * "SEQ"), else the arguments since=SEQ and epoch=EPOCH.  It depends on
 * nothing but the C library so that the fuzz target can link it alone.
 */


#include <stddef.h>
#include <stdint.h>


#define NGX_HTTP_COLLAB_CURSOR_EPOCH_MAX  64


typedef struct {
    int64_t                since;      /* -1: none */
    const unsigned char   *epoch;      /* into the input; NULL: none */
    size_t                 epoch_len;
} ngx_http_collab_cursor_t;


/*
 * id: the Last-Event-ID value (NULL or empty: none); since, epoch: the
 * arguments (NULL: absent).  0: *cursor is set; -1: malformed.
 */
int ngx_http_collab_cursor_parse(const unsigned char *id, size_t id_len,
    const unsigned char *since, size_t since_len,
    const unsigned char *epoch, size_t epoch_len,
    ngx_http_collab_cursor_t *cursor);


#endif /* _NGX_HTTP_COLLAB_CURSOR_H_INCLUDED_ */
