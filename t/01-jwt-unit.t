#!/usr/bin/perl

# Unit tests of the JWT verifier: builds t/unit/jwt_test.c with
# ngx_http_collab_jwt.c (libcrypto and jansson, no nginx needed) and
# re-emits the TAP of the test program, one Test::More result per line.
# The test program makes its keys and tokens itself with the OpenSSL API.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Collab::Unit;

Collab::Unit::run(name => 'jwt_test',
    sources => ['ngx_collab_module/ngx_http_collab_jwt.c',
                't/unit/jwt_test.c'],
    libs => ['-lcrypto', '-ljansson'],
    comments => 'note');
