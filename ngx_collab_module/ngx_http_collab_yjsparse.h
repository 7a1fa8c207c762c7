
/*
 * Copyright (C) ngx_collab_module authors
 */


#ifndef _NGX_HTTP_COLLAB_YJSPARSE_H_INCLUDED_
#define _NGX_HTTP_COLLAB_YJSPARSE_H_INCLUDED_


/*
 * The messages of the y-websocket protocol (y-protocols 1.x), one per
 * binary WebSocket message: lib0 variable-length unsigned integers (7 bits
 * a byte, least significant first, at most 2^53 - 1 as JavaScript reads
 * them) and byte arrays prefixed by their length.  It depends on nothing
 * but the C library so that the fuzz target can link it alone.
 */


#include <stddef.h>
#include <stdint.h>


#define NGX_HTTP_COLLAB_YJS_SYNC          0
#define NGX_HTTP_COLLAB_YJS_AWARENESS     1
#define NGX_HTTP_COLLAB_YJS_AUTH          2
#define NGX_HTTP_COLLAB_YJS_QUERY         3

/* the sync message's own type */
#define NGX_HTTP_COLLAB_YJS_STEP1         0
#define NGX_HTTP_COLLAB_YJS_STEP2         1
#define NGX_HTTP_COLLAB_YJS_UPDATE        2

#define NGX_HTTP_COLLAB_YJS_UINT_MAX      ((((uint64_t) 1) << 53) - 1)
#define NGX_HTTP_COLLAB_YJS_UINT_LEN      8       /* bytes of the largest */
#define NGX_HTTP_COLLAB_YJS_UINT64_LEN    10      /* of any 64-bit value */


typedef struct {
    unsigned               type;       /* NGX_HTTP_COLLAB_YJS_* */
    unsigned               sync;       /* sync: STEP1, STEP2 or UPDATE */
    const unsigned char   *data;       /* sync, awareness: the byte array */
    size_t                 len;
    const char            *error;      /* -1: why */
} ngx_http_collab_yjs_msg_t;


/*
 * One client's entry of an awareness update.  Its client id and clock are
 * read as 64-bit values (at most 10 bytes; larger ones as UINT64_MAX): one
 * out of range is for the caller to drop, the update is still well-formed.
 */
typedef struct {
    size_t                 start;      /* of the entry in the update */
    uint64_t               client;
    uint64_t               clock;
    const unsigned char   *state;      /* JSON text, not checked here */
    size_t                 state_len;
} ngx_http_collab_yjs_aw_t;


/*
 * A client message: 0, *msg set (bytes after the message's own are
 * ignored, as y-websocket does); -1: malformed, msg->error says why.
 */
int ngx_http_collab_yjs_parse(const unsigned char *p, size_t len,
    ngx_http_collab_yjs_msg_t *msg);

/*
 * The entries of an awareness update, one per call: *pos starts at 0 and
 * *count at -1 (the count is read first).  1: *aw is the next entry;
 * 0: no more; -1: malformed.
 */
int ngx_http_collab_yjs_aw_next(const unsigned char *p, size_t len,
    size_t *pos, int64_t *count, ngx_http_collab_yjs_aw_t *aw);

/* reads an unsigned integer at *pos; 0, or -1: truncated or too large */
int ngx_http_collab_yjs_uint(const unsigned char *p, size_t len,
    size_t *pos, uint64_t *value);

/*
 * writes v, returns the bytes written: at most NGX_HTTP_COLLAB_YJS_UINT_LEN
 * for v up to NGX_HTTP_COLLAB_YJS_UINT_MAX, NGX_HTTP_COLLAB_YJS_UINT64_LEN
 */
size_t ngx_http_collab_yjs_put_uint(unsigned char *p, uint64_t v);


#endif /* _NGX_HTTP_COLLAB_YJSPARSE_H_INCLUDED_ */
