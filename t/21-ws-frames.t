#!/usr/bin/perl

# RFC 6455 conformance of the server side: every MUST a server enforces on
# client frames (close codes 1002/1003/1007/1009), the close handshake,
# control frames inside fragmented messages, UTF-8 across fragments,
# message size limit, server pings and dropping a silent peer.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::WS;

my $t = Collab::Test->new(timeout => 150);
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_max_message 1k;
        }
        location = /collab-ping {
            collab;
            collab_ping 1s;
        }
    }
EOF
$t->start_nginx;

sub fresh {
    my (%o) = @_;
    return $t->ws_session(path => '/collab', %o);
}

# open a session, run $send on it, expect a close frame with $code
sub violation {
    my ($name, $code, $send, %o) = @_;
    my $ws = fresh();
    $send->($ws);
    my $c = $ws->expect_close(3);
    is($c, $code, "$name => close $code") or diag 'got ' . ($c // ($ws->is_eof ? 'EOF' : 'nothing'));
    if ($o{check_eof}) {
        ok($ws->wait_eof(3), "$name: TCP closed after the close handshake");
    }
    $ws->drop;
}

my $subscribe = '{"type":"subscribe","doc":"frames"}';

# --- masking
violation('unmasked text frame', 1002,
    sub { $_[0]->send_text($subscribe, mask => 0) }, check_eof => 1);
violation('unmasked ping', 1002,
    sub { $_[0]->send_ping('x', mask => 0) });

# --- RSV bits (no extension negotiated)
for my $rsv (4, 2, 1) {
    violation("RSV bits $rsv on a text frame", 1002,
        sub { $_[0]->send_text($subscribe, rsv => $rsv) });
}
violation('RSV bit on a ping', 1002, sub { $_[0]->send_ping('x', rsv => 4) });

# --- reserved opcodes
for my $op (3 .. 7, 0xB .. 0xF) {
    violation(sprintf('reserved opcode 0x%X', $op), 1002,
        sub { $_[0]->send_frame(opcode => $op, payload => 'x') });
}

# --- control frames
violation('fragmented ping (FIN=0)', 1002,
    sub { $_[0]->send_frame(opcode => 9, fin => 0, payload => 'x') });
violation('fragmented close (FIN=0)', 1002,
    sub { $_[0]->send_frame(opcode => 8, fin => 0, payload => pack('n', 1000)) });
violation('ping with 126-byte payload', 1002,
    sub { $_[0]->send_ping('p' x 126) });
violation('close with 126-byte payload', 1002,
    sub { $_[0]->send_close(1000, 'r' x 124) });

# --- fragmentation
violation('continuation without a start', 1002,
    sub { $_[0]->send_frame(opcode => 0, payload => $subscribe) });
violation('continuation (FIN=0) without a start', 1002,
    sub { $_[0]->send_frame(opcode => 0, fin => 0, payload => '{') });
violation('new text frame while a message is fragmented', 1002, sub {
    $_[0]->send_frame(opcode => 1, fin => 0, payload => '{"type":');
    $_[0]->send_frame(opcode => 1, fin => 1, payload => $subscribe);
});
violation('binary frame while a text message is fragmented', 1002, sub {
    $_[0]->send_frame(opcode => 1, fin => 0, payload => '{"type":');
    $_[0]->send_frame(opcode => 2, fin => 1, payload => 'x');
});

# --- ping in the middle of a fragmented message
{
    my $ws = fresh();
    $ws->send_frame(opcode => 1, fin => 0, payload => '{"type":"subs');
    $ws->send_ping('mid-message');
    $ws->send_frame(opcode => 0, fin => 0, payload => 'cribe","doc"');
    $ws->send_pong('unsolicited');
    $ws->send_frame(opcode => 0, fin => 1, payload => ':"frag-doc"}');
    my $pong = $ws->recv_msg(3, return_control => 1);
    ok($pong && $pong->{control} && $pong->{opcode} == 10,
        'ping inside a fragmented message answered with a pong');
    is($pong && $pong->{payload}, 'mid-message', 'pong carries the ping payload');
    my $m = $ws->wait_for('subscribed', 5);
    is($m && $m->{doc}, 'frag-doc', 'the fragmented message is processed after the ping');
    ok($ws->is_open, 'connection still open');
    $ws->close;
}

# --- ping / pong basics
{
    my $ws = fresh();
    for my $p ('', 'abc', 'z' x 125, "\x00\xff\x80binary") {
        $ws->send_ping($p);
        my $f = $ws->recv_msg(3, return_control => 1);
        ok($f && $f->{opcode} == 10 && $f->{payload} eq $p,
            'pong echoes a ' . length($p) . '-byte ping payload');
    }
    # 20 pings in one write: only the latest unanswered ping needs its pong
    # (RFC 6455 5.5.3; docs/limits.md, ping flood)
    $ws->send_raw(join '', map { Collab::WS::build_frame(opcode => 9, payload => "p$_") } 1 .. 20);
    my @p;
    while (!@p || $p[-1] ne 'p20') {
        my $f = $ws->recv_msg(3, return_control => 1) or last;
        push @p, $f->{payload} if $f->{opcode} == 10;
    }
    my @n = map { /^p(\d+)$/ ? $1 : 0 } @p;
    ok(@p && $p[-1] eq 'p20' && !grep({ $n[$_] <= $n[$_ - 1] } 1 .. $#n),
       '20 pipelined pings: pongs in order, the last one answered')
        or diag("pongs: @p");
    ok(!$ws->{server_masked}, 'server frames are not masked');
    ok(!$ws->{server_rsv}, 'server frames have no RSV bits');
    $ws->close;
}

# --- frame encodings a server must accept
{
    my $ws = fresh();
    $ws->send_text('{"type":"subscribe","doc":"split-doc"}', split => 1);
    my $m = $ws->wait_for('subscribed', 5);
    is($m && $m->{doc}, 'split-doc', 'frame written byte by byte is processed');

    my $pad = ' ' x 300;
    $ws->send_text('{"type":"subscribe",' . $pad . '"doc":"len16-doc"}');
    $m = $ws->wait_for('subscribed', 5);
    is($m && $m->{doc}, 'len16-doc', 'frame with a 16-bit length is processed');

    $ws->send_fragmented(1, '{"type":', '"subscribe"', ',"doc":', '"three-doc"}');
    $m = $ws->wait_for('subscribed', 5);
    is($m && $m->{doc}, 'three-doc', 'message in 4 fragments is processed');

    $ws->send_frame(opcode => 1, fin => 0, payload => '{"type":"subscribe","doc":"empty-frag-doc"}');
    $ws->send_frame(opcode => 0, fin => 1, payload => '');
    $m = $ws->wait_for('subscribed', 5);
    is($m && $m->{doc}, 'empty-frag-doc', 'empty final continuation frame');
    $ws->close;
}

# --- UTF-8
violation('invalid UTF-8 byte 0xFF', 1007,
    sub { $_[0]->send_text(qq({"type":"intent","doc":"u","data":"\xff"})) });
violation('overlong encoding', 1007,
    sub { $_[0]->send_text(qq({"type":"intent","doc":"u","data":"\xc0\xaf"})) });
violation('UTF-16 surrogate', 1007,
    sub { $_[0]->send_text(qq({"type":"intent","doc":"u","data":"\xed\xa0\x80"})) });
violation('code point above U+10FFFF', 1007,
    sub { $_[0]->send_text(qq({"type":"intent","doc":"u","data":"\xf4\x90\x80\x80"})) });
violation('message ends inside a code point', 1007,
    sub { $_[0]->send_text(qq({"type":"intent","doc":"u","data":"\xe2\x82)) });
violation('invalid sequence split across fragments', 1007, sub {
    $_[0]->send_frame(opcode => 1, fin => 0, payload => qq({"type":"intent","data":"\xe2\x82));
    $_[0]->send_frame(opcode => 0, fin => 1, payload => qq(\x28"}));
});
violation('fragmented message ends inside a code point', 1007, sub {
    $_[0]->send_frame(opcode => 1, fin => 0, payload => qq({"data":"x"} \xf0\x9f));
    $_[0]->send_frame(opcode => 0, fin => 1, payload => qq(\x98));
});
# ASSUMPTION: invalid UTF-8 fails the connection as soon as it arrives
# (fail fast), without waiting for the rest of a fragmented message.
violation('invalid UTF-8 in the first fragment (fail fast)', 1007, sub {
    $_[0]->send_frame(opcode => 1, fin => 0, payload => qq({"data":"\xff));
});
violation('invalid UTF-8 in a close reason', 1007,
    sub { $_[0]->send_close(1000, "bad \xff reason") });

{
    my $ws = fresh();
    is(($t->subscribe($ws, 'utf8-doc') // {})->{type}, 'subscribed', 'subscribed utf8-doc');
    # "h€llo 😀" with both multi-byte characters split across fragments
    my $json = qq({"type":"delta","doc":"utf8-doc","id":"u1","data":"h\xe2\x82\xacllo \xf0\x9f\x98\x80"});
    my $i = index($json, "\xe2") + 1;
    my $j = index($json, "\xf0") + 2;
    $ws->send_frame(opcode => 1, fin => 0, payload => substr($json, 0, $i));
    $ws->send_frame(opcode => 0, fin => 0, payload => substr($json, $i, $j - $i));
    $ws->send_frame(opcode => 0, fin => 1, payload => substr($json, $j));
    my $ack = $ws->wait_for({ type => 'ack', id => 'u1' }, 5);
    ok($ack, 'valid UTF-8 split across fragment boundaries is accepted');
    my $d = $ws->wait_for({ type => 'delta', id => 'u1' }, 5);
    is($d && $d->{data}, "h\x{20ac}llo \x{1f600}", 'the delta data arrives intact');
    $ws->close;
}

# --- size limit (collab_max_message 1k)
violation('1025-byte message', 1009,
    sub { my $m = '{"type":"subscribe","doc":"big"}'; $_[0]->send_text($m . (' ' x (1025 - length $m))) });
violation('message over the limit in 11 small fragments', 1009, sub {
    my @parts = ('{"type":"x","pad":"' . ('a' x 81), map { 'a' x 100 } 1 .. 10);
    $_[0]->send_frame(opcode => 1, fin => 0, payload => shift @parts);
    $_[0]->send_frame(opcode => 0, fin => 0, payload => $_) for @parts;
});
# ASSUMPTION: a frame that declares a length over the limit is refused
# with 1009 from its header alone, without waiting for the payload.
violation('frame header declaring 2^40 bytes', 1009, sub {
    $_[0]->send_raw(substr(Collab::WS::build_frame(opcode => 1, len => 2**40, len_bits => 64,
        payload => ''), 0, 14));
});
violation('64-bit length with the most significant bit set', 1002, sub {
    my $f = chr(0x81) . chr(0x80 | 127) . "\x80\x00\x00\x00\x00\x00\x00\x05" . "\x00\x00\x00\x00" . 'hello';
    $_[0]->send_raw($f);
});
{
    # ASSUMPTION: the limit is inclusive: a message of exactly 1024 bytes is fine
    my $ws = fresh();
    my $msg = '{"type":"subscribe","doc":"exact-doc"}';
    $msg .= ' ' x (1024 - length $msg);
    $ws->send_text($msg);
    my $m = $ws->wait_for('subscribed', 5);
    is($m && $m->{doc}, 'exact-doc', 'a message of exactly collab_max_message bytes is accepted');
    $ws->close;
}

# --- binary
violation('binary message', 1003, sub { $_[0]->send_binary('{"type":"subscribe"}') }, check_eof => 1);

# --- close handshake
for my $code (1000, 1001, 1003, 1011, 3000, 4000, 4999) {
    my $ws = fresh();
    $ws->send_close($code, 'bye');
    my $c = $ws->expect_close(3);
    is($c, $code, "close $code echoed with the same code");
    ok($ws->wait_eof(3), "TCP closed after close $code");
}
{
    my $ws = fresh();
    $ws->send_close(1000, "bye \xe2\x82\xac");
    is($ws->expect_close(3), 1000, 'close with a UTF-8 reason echoed');
    $ws->drop;

    # ASSUMPTION: an empty close is answered with an empty close or 1000
    $ws = fresh();
    $ws->send_close;
    my $c = $ws->expect_close(3);
    ok(defined $c && ($c == 1005 || $c == 1000), 'empty close answered (empty or 1000)')
        or diag 'got ' . ($c // 'nothing');
    $ws->drop;
}
for my $code (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535) {
    violation("close with invalid code $code", 1002, sub { $_[0]->send_close($code) });
}
violation('close with a 1-byte payload', 1002, sub { $_[0]->send_close(undef, undef, raw => "\x03") });

# ASSUMPTION: an empty text message is a protocol-level `error invalid`,
# not a WebSocket failure; the session stays open.
{
    my $ws = fresh();
    $ws->send_text('');
    my $e = $ws->wait_for('error', 3);
    is($e && $e->{code}, 'invalid', 'empty text message => error invalid');
    ok($ws->is_open, 'session still open after an empty message');
    $ws->close;
}

# --- server pings (collab_ping 1s on /collab-ping)
{
    my $ws = $t->ws_session(path => '/collab-ping');
    is($ws->{welcome}{heartbeat}, 1, 'welcome.heartbeat = 1');
    my $t0 = time;
    $ws->collect(3.6);
    my @at = map { $_->[0] - $t0 } @{ $ws->pings };
    ok(@at >= 2 && @at <= 5, 'server pings about every second: ' . scalar(@at) . ' in 3.6s')
        or diag "pings at: @at";
    my @gaps = map { $at[$_] - $at[$_ - 1] } 1 .. $#at;
    ok(!grep({ $_ < 0.5 || $_ > 2 } @gaps), 'ping intervals within 0.5..2s')
        or diag "gaps: @gaps";
    ok($ws->is_open, 'a peer that answers pings stays connected');
    $ws->send_ping('still');
    my $f = $ws->recv_msg(3, return_control => 1);
    $f = $ws->recv_msg(3, return_control => 1) while $f && $f->{opcode} == 9;
    ok($f && $f->{opcode} == 10 && $f->{payload} eq 'still', 'and still answers');
    $ws->close;
}
{
    my $ws = $t->ws_session(path => '/collab-ping', auto_pong => 0, auto_close_reply => 0);
    my $t0 = time;
    my $end;
    while (time - $t0 < 8) {
        my $f = $ws->recv_msg(0.2, return_control => 1);
        if (($f && $f->{close}) || $ws->is_eof) { $end = time - $t0; last }
    }
    ok(defined $end && $end >= 1.5 && $end <= 4.5,
        'a peer that stops answering pings is dropped after about 2 intervals')
        or diag 'after ' . ($end // 'never');
    ok($ws->wait_eof(4), 'and its TCP connection is closed');
}

$t->done;
done_testing;
