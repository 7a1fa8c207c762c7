#!/usr/bin/perl

# Unit tests of the WebSocket frame parser: builds t/unit/wsparse_test.c
# with ngx_http_collab_wsparse.c (no nginx needed) and re-emits the TAP
# of the test program, one Test::More result per line.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Collab::Unit;

Collab::Unit::run(name => 'wsparse_test',
    sources => ['t/unit/wsparse_test.c',
                'ngx_collab_module/ngx_http_collab_wsparse.c']);
