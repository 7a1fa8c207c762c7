
/*
 * Copyright (C) ngx_collab_module authors
 */


#ifndef _NGX_HTTP_COLLAB_JSON_H_INCLUDED_
#define _NGX_HTTP_COLLAB_JSON_H_INCLUDED_


/*
 * A JSON scanner that finds where values are in a message's text, so that
 * a client's "data" is stored and relayed as the client wrote it (numbers
 * keep their digits: 0.1 stays 0.1, integers of any size pass).  It
 * depends on nothing but the C library so that the fuzz target can link it
 * alone.
 *
 * It checks RFC 8259 grammar with the rules of the jansson decoder the
 * module also uses: UTF-8 only, no "\u0000", surrogates in pairs, nesting
 * at most NGX_HTTP_COLLAB_JSON_DEPTH deep.  Number ranges are not checked
 * here (jansson does that).
 */


#include <stddef.h>
#include <stdint.h>


#define NGX_HTTP_COLLAB_JSON_DEPTH    2048


typedef struct {
    size_t         start;     /* the value's first byte */
    size_t         end;       /* one past its last byte */
    unsigned       found:1;
} ngx_http_collab_json_span_t;


/*
 * Checks that text[0, len) is one JSON value with optional white space
 * around it and, when it is an object, finds the value of its member
 * "name" (compared after unescaping; a second member of that name makes
 * the text invalid).  0: valid; -1: invalid at *error.
 */
int ngx_http_collab_json_scan(const unsigned char *text, size_t len,
    const char *name, size_t name_len, ngx_http_collab_json_span_t *member,
    size_t *error);

/*
 * The elements of a valid JSON array, one per call: *pos starts at 0.
 * 1: *elem is the next element; 0: no more; -1: not an array.
 */
int ngx_http_collab_json_element(const unsigned char *text, size_t len,
    size_t *pos, ngx_http_collab_json_span_t *elem);

/*
 * Copies a valid JSON value without the white space outside its strings
 * (so that it holds no line break either); dst has room for len bytes.
 * Returns the length copied.
 */
size_t ngx_http_collab_json_compact(unsigned char *dst,
    const unsigned char *src, size_t len);


#endif /* _NGX_HTTP_COLLAB_JSON_H_INCLUDED_ */
