#!/usr/bin/perl

# An `error` message over SSE is the event `collab-error`, not `error`:
# EventSource fires its own `error` event when the connection fails, and a
# page listening to "error" could not tell a server message from a dropped
# connection (issue 8, item 4).  The data is the same JSON message, with
# "type":"error".

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 30);
$t->start_redis;
$t->write_nginx_conf(<<'EOF2');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_limit_zone 1m;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_max_sessions_per_doc 1;
        }
    }
EOF2
$t->start_nginx;

my $first = $t->sse(path => '/collab?doc=e');
ok($first->wait_event('subscribed', 5), 'the first stream is subscribed');

my $second = $t->sse(path => '/collab?doc=e');
my $ev = $second->wait_event(sub { $_[0]{event} ne 'welcome' }, 5);
is($ev && $ev->{event}, 'collab-error', 'the refused stream gets the event collab-error');
is($ev && $ev->{json}{type}, 'error', 'its data is the error message');
is($ev && $ev->{json}{code}, 'rate_limited', 'with its code');
ok($second->wait_end(5), 'and the stream ends');

$t->done;
done_testing;
