#!/usr/bin/perl

# What a client sends keeps its numbers (issue 9, item 7; docs/protocol.md,
# docs/limits.md):
#   the "data" of a delta, a state and an intent is stored and relayed as
#   the client wrote it, without the white space between tokens: 0.1 stays
#   0.1, -0 stays -0, integers beyond 64 bits pass unchanged, nested values
#   too; a number no double can hold (1e400) is refused as `invalid`;
#   a message of [0.1,0.1,...] just under collab_max_message is stored with
#   no more bytes than it had, and its fan-out fits the subscriber's queue;
#   the byte rate counts what is stored.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_auth variable;
        collab_user $arg_user;
        collab_default_role editor;

        location = /collab {
            collab;
            collab_max_message 64k;
            collab_send_queue 256k;
            collab_rate 1000r/s burst=1000 bytes=1m;
        }
    }
EOF
$t->start_nginx;

# raw text of the next delta/state/intent on a WebSocket
sub raw_next {
    my ($ws, $type) = @_;
    my $deadline = time + 5;
    while (time < $deadline) {
        my $m = $ws->recv_msg(1) or next;
        next if $m->{control};
        return $m->{data} if $m->{data} =~ /^\{"type":"$type"/;
    }
    return undef;
}
sub reply {
    my ($ws) = @_;
    my $deadline = time + 5;
    while (time < $deadline) {
        my $m = $ws->recv_msg(1) or next;
        next if $m->{control};
        my $j = Collab::Test::json_decode($m->{data});
        return $j if $j->{type} =~ /^(ack|nack|error|ok)$/;
    }
    return undef;
}

my $w = $t->ws_session(path => '/collab?user=w');
my $sub = $t->subscribe($w, 'nums');
is($sub->{type}, 'subscribed', 'watcher subscribed');
my $c = $t->ws_session(path => '/collab?user=c');

my @cases = (
    ['0.1',                         '0.1'],
    ["[0.1, 0.2 ,\n 0.3]",          '[0.1,0.2,0.3]'],
    ['-0',                          '-0'],
    ['-0.0',                        '-0.0'],
    ['12345678901234567890',        '12345678901234567890'],
    ['-123456789012345678901234567890123', '-123456789012345678901234567890123'],
    ['1E+2',                        '1E+2'],
    ['1e-400',                      '1e-400'],
    ['{"a" : {"b" : [1.10, {"c" :"x y\\n"}]}, "n" : null}', '{"a":{"b":[1.10,{"c":"x y\\n"}]},"n":null}'],
    ['"\\u00e9\\ud83d\\ude00 \\"q\\""', '"\\u00e9\\ud83d\\ude00 \\"q\\""'],
);

my $n = 0;
for my $case (@cases) {
    my ($in, $want) = @$case;
    my $text = $in;
    $in =~ s/\n/\\n/g;
    my $id = 'n' . ++$n;
    $c->send_text(qq({"type":"delta","doc":"nums","id":"$id","data":$text}));
    my $r = reply($c);
    is($r && $r->{type}, 'ack', "$in: acked") or diag explain $r;
    my $raw = raw_next($w, 'delta');
    like($raw // '', qr/"data":\Q$want\E\}$/, "$in: relayed as $want");
    my ($e) = grep { $_->{id} eq $id } $t->log_entries('nums');
    is($e && $e->{data}, $want, "$in: stored as $want");
}

# state and intent keep their numbers too
$c->send_text('{"type":"state","doc":"nums","seq":1,"data":{"x":0.1,"big":99999999999999999999}}');
my $r = reply($c);
is($r && $r->{type}, 'ok', 'state stored');
is($t->redis('HGET', 'collab:{nums}:state', 'data'), '{"x":0.1,"big":99999999999999999999}', 'state data as sent');
is($t->subscribe($c, 'nums', since => 0)->{type}, 'subscribed', 'sender subscribed');
$c->clear_pending;
$c->send_text('{"type":"intent","doc":"nums","data":{"cursor":0.1}}');
my $in = raw_next($w, 'intent');
like($in // '', qr/"data":\{"cursor":0\.1\}\}$/, 'intent relayed with 0.1');
$c->send_text('{"type":"presence","doc":"nums","data":{"id":12345678901234567890}}');
$in = raw_next($w, 'presence');
like($in // '', qr/"data":\{"id":12345678901234567890\}\}$/, 'presence relayed with a big integer');

# POST keeps them as well, in a batch and alone
for my $case (['[{"type":"delta","doc":"nums","id":"p1","data":[0.1, 12345678901234567890]}]', 'p1', '[0.1,12345678901234567890]'],
              ['{"type":"delta","doc":"nums","id":"p2","data":{"x":1e-400}}', 'p2', '{"x":1e-400}']) {
    my ($body, $id, $want) = @$case;
    my $res = $t->post('/collab?user=c', $body);
    is($res->{status}, 200, "POST $id: 200") or diag $res->{body};
    like($res->{body} // '', qr/"type":"ack"/, "POST $id: acked");
    my ($e) = grep { $_->{id} eq $id } $t->log_entries('nums');
    is($e && $e->{data}, $want, "POST $id: stored as $want");
}

# a base or since written as 3.0 is the integer 3; 3.5 is not
$c->send_text('{"type":"delta","doc":"nums","id":"b1","base":3.5,"data":1}');
$r = reply($c);
is($r && $r->{code}, 'invalid', 'base 3.5: nack invalid');

# numbers beyond a double
for my $bad ('1e400', '-1e400', '[1, 2e999]') {
    $c->send_text(qq({"type":"delta","doc":"nums","id":"inf","data":$bad}));
    $r = reply($c);
    is(($r && $r->{type}) . ':' . ($r && $r->{code} // ''), 'error:invalid', "$bad: refused as invalid");
}

# the size limit counts what is stored: a message of 0.1s just under 64k
{
    my $data = '[' . join(',', ('0.1') x 16000) . ']';
    my $msg = qq({"type":"delta","doc":"nums","id":"big","data":$data});
    ok(length($msg) < 65536, 'message of ' . length($msg) . ' bytes');
    $c->send_text($msg);
    $r = reply($c);
    is($r && $r->{type}, 'ack', 'acked');
    my $raw = raw_next($w, 'delta');
    ok($raw && length($raw) < length($msg) + 200, 'the fan-out is about as long as the message ('
        . length($raw // '') . ' bytes), not 5 times');
    my ($e) = grep { $_->{id} eq 'big' } $t->log_entries('nums');
    is(length($e->{data}), length($data), 'stored as long as it came');
    is($e->{data}, $data, 'and the same bytes');
    ok($w->is_open, 'the watcher was not resynced or closed');
}

$t->done;
done_testing;
