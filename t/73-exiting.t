#!/usr/bin/perl

# A request whose headers complete after `nginx -s reload` reaches the old,
# exiting worker (issue 8, item 4).  It must not become a session there: no
# close 1001 would ever reach it and the worker would log `open socket
# left`.  It is refused with 503, so that the client reconnects to a new
# worker; the same for an event stream.  A POST still completes.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use MIME::Base64 qw(encode_base64);
use Collab::Test;
use Collab::HTTP;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_ping 30s;

        location = /collab {
            collab;
            collab_doc $arg_doc;
        }
    }
EOF
$t->start_nginx;

my $key = encode_base64('0123456789abcdef', '');

# the request line and a first header now, the rest later
sub half_sent {
    my ($head) = @_;
    my $s = Collab::HTTP::connect_socket(port => $t->port) or die "connect: $!";
    Collab::HTTP::write_all($s, $head) or die "write: $!";
    return $s;
}

sub response {
    my ($s, $rest) = @_;
    Collab::HTTP::write_all($s, $rest) or return undef;
    my $buf = '';
    my $deadline = time + 5;
    while (time < $deadline && index($buf, "\r\n\r\n") < 0) {
        my $n = Collab::HTTP::read_some($s, \$buf, $deadline - time);
        last if defined $n && $n == 0;
    }
    my ($status) = $buf =~ m{^HTTP/1\.1 (\d{3})};
    return $status;
}

my $ws = half_sent("GET /collab?doc=x HTTP/1.1\r\nHost: 127.0.0.1\r\n");
my $sse = half_sent("GET /collab?doc=x HTTP/1.1\r\nHost: 127.0.0.1\r\n");
my $post = half_sent("POST /collab HTTP/1.1\r\nHost: 127.0.0.1\r\n");

# the requests reached the worker before it was told to exit
sleep 0.2;

my @old = $t->reload_nginx;
ok(@old == 1, 'reloaded: one old worker');
ok($t->pid_alive($old[0]), 'the old worker waits for the half-sent requests');

my $status = response($ws, "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    . "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: $key\r\n\r\n");
is($status, 503, 'a WebSocket handshake completed on the exiting worker gets 503, not 101');

$status = response($sse, "Accept: text/event-stream\r\n\r\n");
is($status, 503, 'an event stream started on the exiting worker gets 503');

my $body = '{"type":"delta","doc":"x","id":"p1","data":1}';
$status = response($post, "Content-Type: application/json\r\nContent-Length: "
    . length($body) . "\r\n\r\n$body");
is($status, 200, 'a POST on the exiting worker still completes');

ok(Collab::Test::wait_until(sub { !$t->pid_alive($old[0]) }, 10),
   'the old worker exits');

my $w = $t->ws_session;
ok($w->ok, 'the new worker takes sessions');
$w->close(1000);

my $log = $t->error_log;
unlike($log, qr/open socket #\d+ left/, 'no socket left open on the old worker');

$t->done;
done_testing;
