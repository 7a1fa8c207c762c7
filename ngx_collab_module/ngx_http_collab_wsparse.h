
/*
 * Copyright (C) ngx_collab_module authors
 */


#ifndef _NGX_HTTP_COLLAB_WSPARSE_H_INCLUDED_
#define _NGX_HTTP_COLLAB_WSPARSE_H_INCLUDED_


/*
 * RFC 6455 frame parser for client-to-server frames.  It depends on nothing
 * but the C library so that the fuzz target can link it alone.
 *
 * The parser is a resumable state machine: it consumes bytes from
 * [*pos, last), unmasks payload bytes in place and returns one event at a
 * time.  Message payload is handed out in chunks that point into the
 * caller's buffer (valid until the caller reads more); control frame
 * payload is collected in the parser itself because a control frame may be
 * split across reads.
 */


#include <stddef.h>
#include <stdint.h>


#define NGX_HTTP_COLLAB_WS_OP_CONT     0x0
#define NGX_HTTP_COLLAB_WS_OP_TEXT     0x1
#define NGX_HTTP_COLLAB_WS_OP_BINARY   0x2
#define NGX_HTTP_COLLAB_WS_OP_CLOSE    0x8
#define NGX_HTTP_COLLAB_WS_OP_PING     0x9
#define NGX_HTTP_COLLAB_WS_OP_PONG     0xa


/* events returned by ngx_http_collab_ws_parse() */
#define NGX_HTTP_COLLAB_WS_AGAIN       0   /* input exhausted */
#define NGX_HTTP_COLLAB_WS_MSG_START   1   /* p->opcode: TEXT or BINARY */
#define NGX_HTTP_COLLAB_WS_MSG_DATA    2   /* p->data, p->len: a chunk */
#define NGX_HTTP_COLLAB_WS_MSG_END     3   /* message complete */
#define NGX_HTTP_COLLAB_WS_CONTROL     4   /* p->opcode, p->data, p->len */
#define NGX_HTTP_COLLAB_WS_ERROR       5   /* p->close_code, p->error */


typedef struct {
    /* set by the caller before the first call */
    uint64_t      max_message;    /* limit of a reassembled message */

    /* output of the last event */
    unsigned      opcode;
    const unsigned char  *data;
    size_t        len;
    unsigned      close_code;     /* 1002, 1007, 1009, 1003 on error */
    const char   *error;          /* static text for the log */

    /* private state */
    unsigned      state;
    unsigned      hdr_len;
    unsigned      hdr_need;
    unsigned char hdr[14];
    unsigned      frame_opcode;
    unsigned      fin:1;
    unsigned      in_message:1;
    unsigned      msg_started:1;
    unsigned      frame_done:1;
    unsigned      msg_opcode;
    unsigned char mask[4];
    unsigned      mask_pos;
    uint64_t      remaining;      /* payload bytes left in this frame */
    uint64_t      msg_len;        /* bytes of the current message so far */
    uint32_t      utf8_state;     /* incremental UTF-8 validator */
    unsigned      ctl_len;
    unsigned char ctl[125];
} ngx_http_collab_ws_parser_t;


void ngx_http_collab_ws_parser_init(ngx_http_collab_ws_parser_t *p,
    uint64_t max_message);
int ngx_http_collab_ws_parse(ngx_http_collab_ws_parser_t *p,
    unsigned char **pos, unsigned char *last);

/* validates a complete buffer; returns 1 when it is valid UTF-8 */
int ngx_http_collab_utf8_valid(const unsigned char *p, size_t len);

/* checks the payload of a close frame: returns 0 or the close code to fail
 * the connection with (1002 bad code or length, 1007 bad UTF-8 reason) */
unsigned ngx_http_collab_ws_close_check(const unsigned char *p, size_t len);


#endif /* _NGX_HTTP_COLLAB_WSPARSE_H_INCLUDED_ */
