#!/usr/bin/perl

# POST transport: one object or an array per body, one reply per message
# in order, state snapshots, idempotent retries, bad bodies, bodies in temp
# files and chunked bodies, concurrent POSTs.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use JSON::PP;
use IO::Select;
use Collab::Test;
use Collab::HTTP;

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

my $t = Collab::Test->new(timeout => 90);
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        client_body_buffer_size 1k;
        # the POSTs of this file all come from one address: the limits have
        # their own tests (t/94-post-flood.t)
        collab_rate 1000r/s burst=1000;
        location = /collab {
            collab;
            collab_max_message 8k;
        }
    }
EOF
$t->start_nginx;

sub post { $t->post('/collab', @_) }
sub delta { my ($doc, $id, $data) = @_; { type => 'delta', doc => $doc, id => $id, data => $data } }
sub types { join ',', map { $_->{type} // '?' } @{ $_[0] || [] } }

my $sub = $t->ws_session;
$t->subscribe($sub, 'p1');

# --- one object
my $r = post(delta('p1', 'o1', { v => 1 }));
is($r->{status}, 200, 'POST one object: 200') or diag explain $r;
like($r->{headers}{'content-type'} // '', qr{^application/json\b}, 'application/json');
is(ref $r->{json}, 'ARRAY', 'reply is a JSON array') or diag $r->{body};
is(scalar @{ $r->{json} || [] }, 1, 'one reply');
my $a0 = ($r->{json} || [])->[0] || {};
is($a0->{type}, 'ack', 'ack');
is($a0->{id}, 'o1', 'ack.id');
is($a0->{doc}, 'p1', 'ack.doc');
is($a0->{seq}, 1, 'ack.seq 1');

# --- an array, acks in order
$r = post([map { delta('p1', "arr$_", $_) } 1 .. 3]);
is($r->{status}, 200, 'POST array: 200');
is(types($r->{json}), 'ack,ack,ack', 'three acks');
is(join(',', map { $_->{id} } @{ $r->{json} || [] }), 'arr1,arr2,arr3', 'acks in body order');
is(join(',', map { $_->{seq} } @{ $r->{json} || [] }), '2,3,4', 'seq 2,3,4');

my @got;
while (@got < 4) {
    my $m = $sub->wait_for({ type => 'delta', doc => 'p1' }, 5) or last;
    push @got, $m;
}
is(join(',', map { $_->{seq} } @got), '1,2,3,4', 'WS subscriber sees the POSTed deltas in order');

# --- two docs interleaved
$r = post([delta('pa', 'x1', 1), delta('pb', 'y1', 1), delta('pa', 'x2', 2), delta('pb', 'y2', 2)]);
is(join(',', map { "$_->{doc}:$_->{seq}" } @{ $r->{json} || [] }), 'pa:1,pb:1,pa:2,pb:2',
    'interleaved docs: each its own seq, replies in order');

# --- mixed valid and invalid messages
$r = post([
    delta('p1', 'm1', 'ok'),
    delta('bad doc', 'm2', 'bad'),
    { type => 'state', doc => 'p1', seq => 5, data => { snap => 5 } },
    { type => 'nonsense' },
    { type => 'delta', doc => 'p1', data => 'no id' },
    delta('p1', 'm3', 'ok'),
]);
is($r->{status}, 200, 'mixed body: 200');
my $j = $r->{json} || [];
is(scalar @$j, 6, 'one reply per message');
is($j->[0]{type}, 'ack', '1: ack');
is($j->[0]{seq}, 5, '1: seq 5');
is($j->[1]{type}, 'nack', '2: bad doc => nack');
is($j->[1]{code}, 'invalid', '2: invalid');
is($j->[1]{id}, 'm2', '2: nack carries the id');
is($j->[2]{type}, 'ok', '3: state => ok');
is($j->[3]{type}, 'error', '4: unknown type => error');
is($j->[3]{code}, 'invalid', '4: invalid');
ok($j->[4]{type} && $j->[4]{type} =~ /^(nack|error)$/ && ($j->[4]{code} // '') eq 'invalid',
    '5: delta without id => nack/error invalid');
is($j->[5]{type}, 'ack', '6: ack');
is($j->[5]{seq}, 6, '6: seq 6 (the invalid ones took no seq)');
# ASSUMPTION: `seq` of collab:{doc}:state is the snapshot's seq (see 30-docs.t)
is($t->redis('HGET', 'collab:{p1}:state', 'seq'), '5', 'state stored via POST');

# --- idempotent retry
$r = post([delta('p1', 'arr2', 2), delta('p1', 'o1', { v => 1 })]);
is(join(',', map { $_->{seq} // '?' } @{ $r->{json} || [] }), '3,1', 'retries acked with the original seqs');
is($t->log_len('p1'), 6, 'retries not stored again');

# --- bodies bigger than client_body_buffer_size (temp file) and chunked
my @many = map { delta('pt', "t$_", 'x' x 60) } 1 .. 40;
my $body = $JSON->encode(\@many);
ok(length($body) > 1024 && length($body) < 8192, 'body of ' . length($body) . ' bytes');
$r = post($body);
is($r->{status}, 200, 'body larger than client_body_buffer_size: 200');
is(join(',', map { $_->{seq} // '?' } @{ $r->{json} || [] }), join(',', 1 .. 40),
    '40 acks from a body buffered to a temp file');

$r = post([map { delta('pc', "c$_", $_) } 1 .. 10], chunked => 100);
is($r->{status}, 200, 'chunked request body: 200');
is(join(',', map { $_->{seq} // '?' } @{ $r->{json} || [] }), join(',', 1 .. 10), 'chunked body: 10 acks');

# --- bad bodies
# ASSUMPTION: an unparseable body is either a 400 or a 200 whose array holds
# a single `error invalid`
for my $case (['invalid JSON', 'not json'], ['truncated JSON', '[{"type":"delta"'],
              ['JSON string', '"delta"'], ['JSON number', '7'], ['empty body', '']) {
    $r = post($case->[1]);
    my $okay = $r->{status} == 400
        || ($r->{status} == 200 && ref $r->{json} eq 'ARRAY' && @{ $r->{json} } == 1
            && $r->{json}[0]{type} eq 'error' && $r->{json}[0]{code} eq 'invalid');
    ok($okay, "$case->[0] body => 400 or [error invalid]")
        or diag "$r->{status} $r->{body}";
}
# ASSUMPTION: an empty array gets an empty array
$r = post('[]');
is($r->{status}, 200, 'empty array: 200');
is_deeply($r->{json}, [], 'empty array: []');

# ASSUMPTION: collab_max_message applies to POST too: a single message over
# it (8k) is refused (413, or a too_large reply) and not stored
$r = post([delta('toobig', 'huge', 'y' x 9000)]);
ok($r->{status} == 413
    || ($r->{status} == 200 && ref $r->{json} eq 'ARRAY'
        && ($r->{json}[0]{code} // '') eq 'too_large'),
    'message over collab_max_message => 413 or too_large')
    or diag "$r->{status} " . substr($r->{body} // '', 0, 200);
is($t->redis('EXISTS', 'collab:{toobig}:log'), 0, 'the oversized message is not stored');

# ASSUMPTION: collab_max_message bounds each message of a POST body, not the
# body (client_max_body_size does that): 100 small deltas in 15 KB are fine
$r = post([map { delta('many', "z$_", 'y' x 100) } 1 .. 100]);
is($r->{status}, 200, '15 KB array of small messages: 200');
is(scalar(grep { $_->{type} eq 'ack' } @{ $r->{json} || [] }), 100, '... 100 acks');

# --- concurrent POSTs: 20 connections x 5 deltas on one doc
my @socks;
for my $c (1 .. 20) {
    my $s = Collab::HTTP::connect_socket(port => $t->port) or die "connect: $!";
    my $bd = $JSON->encode([map { delta('conc', "c$c-$_", $_) } 1 .. 5]);
    push @socks, [$s, "POST /collab HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        . "Content-Length: " . length($bd) . "\r\nConnection: close\r\n\r\n$bd", ''];
}
Collab::HTTP::write_all($_->[0], $_->[1], 5) for @socks;
my $deadline = time + 10;
my %open = map { $_ => $socks[$_] } 0 .. $#socks;
while (%open && time < $deadline) {
    my $sel = IO::Select->new(map { $_->[0] } values %open);
    for my $fh ($sel->can_read(0.5)) {
        my ($k) = grep { $open{$_}[0] == $fh } keys %open;
        my $n = sysread($fh, my $chunk, 65536);
        if ($n) { $open{$k}[2] .= $chunk } else { delete $open{$k} }
    }
}
my (@all, $inorder);
$inorder = 1;
for my $s (@socks) {
    my ($head, $bd) = split /\r\n\r\n/, $s->[2], 2;
    if (($head // '') =~ /chunked/i) { my $raw = $bd; ($bd) = Collab::HTTP::dechunk(\$raw) }
    my $j = eval { $JSON->decode($bd // '') } || [];
    my @seq = map { $_->{seq} // -1 } @$j;
    $inorder = 0 if join(',', @seq) ne join(',', sort { $a <=> $b } @seq) || @seq != 5;
    push @all, @seq;
}
is(scalar @all, 100, '100 acks from 20 concurrent POSTs');
is(join(',', sort { $a <=> $b } @all), join(',', 1 .. 100), 'seqs are exactly 1..100');
ok($inorder, 'each response acks in body order with increasing seq');
is($t->log_len('conc'), 100, 'log holds 100 entries');

$sub->close;
$t->done;
done_testing;
