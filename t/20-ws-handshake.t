#!/usr/bin/perl

# WebSocket opening handshake (RFC 6455 section 4) and the plain HTTP
# answers of a collab location: 101/400/426/403/405, subprotocol echo,
# welcome message, handshake bytes followed by a frame in one packet.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MIME::Base64 qw(encode_base64);
use Collab::Test;
use Collab::WS;

my $t = Collab::Test->new(timeout => 90);
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_ping 1s;
        }
        location = /collab-origin {
            collab;
            collab_allow_origin https://app.example.com *.example.org;
        }
    }
EOF
$t->start_nginx;

sub hs { $t->ws(@_) }

# --- a good handshake
my $ws = hs();
is($ws->status, 101, '101 Switching Protocols') or diag $ws->status_line, $ws->body;
like($ws->status_line // '', qr{^HTTP/1\.1 101\b}, 'status line');
like($ws->header('upgrade') // '', qr/^websocket$/i, 'Upgrade: websocket');
like($ws->header('connection') // '', qr/\bupgrade\b/i, 'Connection: upgrade');
ok($ws->accept_ok, 'Sec-WebSocket-Accept is correct')
    or diag 'got ' . ($ws->header('sec-websocket-accept') // 'none');
is($ws->header('sec-websocket-protocol'), 'collab.v1', 'subprotocol collab.v1 echoed');
ok(!defined $ws->header('content-length') || $ws->header('content-length') eq '0',
    'no body announced on 101');

my $w = $ws->recv_json(3);
is($w && $w->{type}, 'welcome', 'first message is welcome');
ok($w && defined $w->{session} && length $w->{session}, 'welcome.session');
is($w && $w->{user}, 'anonymous', 'welcome.user is anonymous with auth off');
is($w && $w->{heartbeat}, 1, 'welcome.heartbeat = collab_ping in seconds');

my $ws2 = hs();
my $w2 = $ws2->recv_json(3);
ok($w2 && $w && $w2->{session} ne $w->{session}, 'session ids differ');
is($ws->close(1000), 1000, 'close handshake');
$ws2->close(1000);

# --- subprotocols
$ws = hs(protocols => []);
is($ws->status, 101, 'no subprotocol offered: 101');
ok(!defined $ws->header('sec-websocket-protocol'), 'no subprotocol header when none offered');
is(($ws->recv_json(3) // {})->{type}, 'welcome', 'welcome without subprotocol');
$ws->close;

$ws = hs(protocols => ['chat', 'collab.v1']);
is($ws->header('sec-websocket-protocol'), 'collab.v1', 'collab.v1 picked from a list');
$ws->close;

# ASSUMPTION: an offer without collab.v1 is accepted (101) without a
# Sec-WebSocket-Protocol header, as RFC 6455 4.2.2 allows.
$ws = hs(protocols => ['chat']);
is($ws->status, 101, 'offer without collab.v1: 101');
ok(!defined $ws->header('sec-websocket-protocol'), '... and no subprotocol header');
$ws->drop;

# --- header spellings browsers use
$ws = hs(upgrade => 'WebSocket', connection => 'keep-alive, Upgrade');
is($ws->status, 101, 'Connection: keep-alive, Upgrade and Upgrade: WebSocket accepted');
$ws->drop;

# --- bad handshakes
$ws = hs(version => 8);
is($ws->status, 426, 'version 8 => 426');
like($ws->header('sec-websocket-version') // '', qr/\b13\b/,
    '426 carries Sec-WebSocket-Version: 13');

$ws = hs(version => undef);
ok($ws->status == 400 || $ws->status == 426, 'no version => 400 or 426')
    or diag $ws->status_line;

$ws = hs(key => undef);
is($ws->status, 400, 'no Sec-WebSocket-Key => 400');

$ws = hs(key => encode_base64('x' x 15, ''));
is($ws->status, 400, 'key of 15 bytes => 400');

$ws = hs(key => encode_base64('x' x 17, ''));
is($ws->status, 400, 'key of 17 bytes => 400');

$ws = hs(key => '!!!!not-base64!!!!!!!!==');
is($ws->status, 400, 'key not base64 => 400');

$ws = hs(connection => 'keep-alive');
is($ws->status, 400, 'Connection without upgrade token => 400');

$ws = hs(upgrade => 'h2c');
is($ws->status, 400, 'Upgrade: h2c => 400');

$ws = hs(proto => 'HTTP/1.0');
is($ws->status, 400, 'HTTP/1.0 upgrade => 400');

my $r = $t->http(path => '/collab');
is($r->{status}, 400, 'plain GET (no upgrade, no event-stream) => 400');

for my $m (qw(PUT DELETE PATCH)) {
    $r = $t->http(method => $m, path => '/collab', body => '{}');
    is($r->{status}, 405, "$m => 405");
}

# --- origins
$ws = hs(origin => 'https://evil.example.com');
is($ws->status, 101, 'any origin allowed when collab_allow_origin is not set');
$ws->drop;

my %origins = (
    'https://app.example.com' => 101,
    'https://x.example.org' => 101,
    'https://evil.com' => 403,
    'https://app.example.com.evil.com' => 403,
    'https://evilexample.org' => 403,
    # ASSUMPTION: *.example.org matches any depth of subdomain ...
    'https://a.b.example.org' => 101,
    # ASSUMPTION: ... but not the bare domain
    'https://example.org' => 403,
    # ASSUMPTION: the scheme is part of an exact origin
    'http://app.example.com' => 403,
);
for my $o (sort keys %origins) {
    $ws = hs(path => '/collab-origin', origin => $o);
    is($ws->status, $origins{$o}, "Origin $o => $origins{$o}") or diag $ws->status_line;
    $ws->drop;
}

# --- handshake and first frame in one packet (bytes left in header_in)
my $frame = Collab::WS::build_frame(opcode => 1,
    payload => '{"type":"subscribe","doc":"hs-doc"}');
$ws = hs(extra => $frame);
is($ws->status, 101, 'handshake with a frame behind it');
my $sub = $ws->wait_for('subscribed', 5);
ok($sub && $sub->{doc} eq 'hs-doc', 'frame sent in the handshake packet is processed');
$ws->close;

# a frame behind the handshake, then a ping split between that packet and
# the next write
my $f2 = Collab::WS::build_frame(opcode => 9, payload => 'hello');
$ws = hs(extra => $frame . substr($f2, 0, 3));
select undef, undef, undef, 0.1;
$ws->send_raw(substr($f2, 3));
my $pong = $ws->recv_msg(3, return_control => 1);
$pong = $ws->recv_msg(3, return_control => 1)
    while $pong && !($pong->{control} && $pong->{opcode} == 10);
ok($pong && $pong->{payload} eq 'hello',
    'ping split between the handshake packet and the next write is answered');
$ws->close;

# --- handshake written byte by byte
$ws = hs(split_handshake => 1);
is($ws->status, 101, 'handshake written byte by byte');
is(($ws->recv_json(3) // {})->{type}, 'welcome', 'welcome after a split handshake');
$ws->close;

# --- many concurrent sessions
my @many = map { hs() } 1 .. 100;
my $got = grep { $_->ok && (($_->recv_json(5) // {})->{type} // '') eq 'welcome' } @many;
is($got, 100, '100 concurrent sessions each get a welcome');
$_->drop for @many;

# the server still works after all of that
$ws = eval { $t->ws_session };
ok($ws, 'new session after abrupt disconnects') or diag $@;
$ws->close if $ws;

$t->done;
done_testing;
