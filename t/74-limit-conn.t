#!/usr/bin/perl

# nginx's limit_conn counts a request until its pool is destroyed.  A
# WebSocket session outlives its request (ngx_http_collab_ws_detach()): the
# count must last as long as the session (issue 8, item 4), for WebSockets
# as for event streams.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    limit_conn_zone $binary_remote_addr zone=ip:1m;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_ping 30s;

        location = /collab {
            collab;
            collab_doc $arg_doc;
            limit_conn ip 2;
        }
    }
EOF
$t->start_nginx;

# a session that got its welcome has detached from its request by the time
# a second message (the subscribe's reply) comes
sub open_ws {
    my $ws = $t->ws(path => '/collab');
    return $ws unless $ws->ok;
    $ws->wait_for('welcome', 5);
    $t->subscribe($ws, 'lc');
    return $ws;
}

my @ws = map { open_ws() } 1 .. 2;
ok($ws[0]->ok && $ws[1]->ok, 'two WebSockets from one address are accepted');

my $third = $t->ws(path => '/collab');
is($third->status, 503, 'a third WebSocket is refused by limit_conn ip 2');

$ws[0]->close(1000);
ok($ws[0]->wait_eof(5), 'one of them closes');

my $again = Collab::Test::wait_until(sub {
    my $w = $t->ws(path => '/collab');
    return $w->ok ? $w : undef;
}, 5, 0.1);
ok($again, 'its place is free once it closed');

my $fourth = $t->ws(path => '/collab');
is($fourth->status, 503, 'and the limit holds again');

# event streams count as well, together with the WebSockets
$_->close(1000) for grep { $_ && $_->is_open } $ws[1], $again;
sleep 0.2;

my $sse1 = $t->sse(path => '/collab?doc=lc');
my $sse2 = $t->sse(path => '/collab?doc=lc');
ok($sse1->wait_event('subscribed', 5) && $sse2->wait_event('subscribed', 5),
   'two event streams are accepted');
my $w = $t->ws(path => '/collab');
is($w->status, 503, 'a WebSocket beside them is refused');

$t->done;
done_testing;
