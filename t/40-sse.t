#!/usr/bin/perl

# Server-Sent Events: headers, `subscribed` and `delta` events with
# id EPOCH:SEQ, heartbeat comments, resume via Last-Event-ID and ?since=,
# no gzip, abrupt disconnects.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use JSON::PP;
use Collab::Test;

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

my $t = Collab::Test->new(timeout => 90);
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        gzip on;
        gzip_types text/event-stream application/json;
        gzip_min_length 0;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_ping 1s;
        }
    }
EOF
$t->start_nginx;

sub sse { $t->sse(path => '/collab?doc=' . shift, @_) }

sub first_sub {
    my ($s) = @_;
    return $s->wait_event(sub { ($_[0]{event} // '') eq 'subscribed' || ($_[0]{event} // '') eq 'collab-error' }, 5);
}

sub deltas_until {
    my ($s, $upto, $timeout) = @_;
    my @d;
    my $deadline = time + ($timeout // 5);
    while (time < $deadline) {
        my $e = $s->wait_event('delta', $deadline - time) or last;
        push @d, $e;
        last if ($e->{json}{seq} // 0) >= $upto;
    }
    return @d;
}
sub seqs { join ',', map { $_->{json}{seq} // '?' } @_ }

my $s = sse('s1', headers => ['Accept-Encoding: gzip']);
is($s->status, 200, 'SSE 200') or diag $s->status_line, $s->body;
like($s->header('content-type') // '', qr{^text/event-stream\b}, 'Content-Type: text/event-stream');
like($s->header('cache-control') // '', qr/\bno-cache\b/, 'Cache-Control: no-cache');
is($s->header('x-accel-buffering'), 'no', 'X-Accel-Buffering: no');
ok(!defined $s->header('content-length'), 'no Content-Length');
ok($s->chunked, 'chunked over HTTP/1.1');
ok(!defined $s->header('content-encoding'), 'not gzipped even with gzip on');

my $sub = first_sub($s);
is($sub && $sub->{event}, 'subscribed', 'first event: subscribed');
my $j = $sub ? $sub->{json} : {};
is($j->{type}, 'subscribed', 'data is the subscribed object');
is($j->{doc}, 's1', 'subscribed.doc from collab_doc $arg_doc');
is($j->{seq}, 0, 'seq 0');
my $epoch = $j->{epoch} // '';
ok(length $epoch, 'epoch');
is($sub && $sub->{id}, "$epoch:0", 'id: EPOCH:SEQ on subscribed');
ok(ref $j->{state} eq 'HASH', 'state on a fresh SSE subscription');

# deltas written over WebSocket and POST reach the SSE stream
my $w = $t->ws_session;
for my $i (1 .. 3) {
    $w->send_json({ type => 'delta', doc => 's1', id => "w$i", data => { i => $i } });
    ok($w->wait_for({ type => 'ack', id => "w$i" }, 5), "delta w$i acked");
}
my $r = $t->post('/collab', [{ type => 'delta', doc => 's1', id => 'p4', data => { i => 4 } }]);
is($r->{status}, 200, 'POST delta');

my @d = deltas_until($s, 4);
is(seqs(@d), '1,2,3,4', 'SSE gets deltas 1..4 in order');
is(join(',', map { $_->{id} // '' } @d), join(',', map { "$epoch:$_" } 1 .. 4), 'id: EPOCH:SEQ on deltas');
is(join(',', map { $_->{json}{id} } @d), 'w1,w2,w3,p4', 'op ids');
is_deeply($d[1]{json}{data}, { i => 2 }, 'delta data');
ok(!grep({ $_->{data} =~ /\n/ } @d), 'each event has one data line');

# heartbeat
my $n0 = @{ $s->comments };
$s->next_event(2.5, comments => 1) for 1 .. 3;
my @pings = grep { $_->[1] =~ /^ping\b/ } @{ $s->comments }[$n0 .. $#{ $s->comments }];
ok(@pings >= 1, 'heartbeat comment `: ping` within collab_ping') or diag explain $s->comments;
# the harness: the writer answered the server's pings while the test waited
# on the SSE stream, so it is still there (collab_ping 1s drops a silent one)
ok(scalar @{ $w->pings }, 'the WebSocket writer saw pings while the test read the SSE stream');
ok($w->is_open, 'and answered them: it is still open');
ok(!$t->grep_error_log(qr/did not answer pings/), 'no peer dropped for not answering pings');

# a big delta is flushed whole
my $big = 'b' x 40_000;
$w->send_json({ type => 'delta', doc => 's1', id => 'big', data => $big });
$w->wait_for({ type => 'ack', id => 'big' }, 5);
my ($bd) = deltas_until($s, 5);
ok($bd && $bd->{json}{data} eq $big, '40 KB delta arrives whole over SSE');

# --- resume
my $rs = sse('s1', headers => ["Last-Event-ID: $epoch:2"]);
$sub = first_sub($rs);
ok($sub && $sub->{json}{type} eq 'subscribed', 'resume via Last-Event-ID');
ok($sub && !exists $sub->{json}{state}, 'no state when resuming');
# ASSUMPTION: the id of `subscribed` is a safe resume cursor: the position the
# client holds (since, or state.seq), not the head.  With EPOCH:head an
# EventSource that drops during the replay would resume past deltas it never
# got.  (docs/protocol.md: id EPOCH:SEQ; this reads SEQ as the cursor.)
is($sub && $sub->{id}, "$epoch:2", 'subscribed id = EPOCH:since (a safe resume cursor)');
is(seqs(deltas_until($rs, 5)), '3,4,5', 'Last-Event-ID replays exactly 3..5');
ok(!$rs->wait_event('delta', 0.5), 'nothing more');
$rs->close;

$rs = sse("s1&since=3&epoch=$epoch");
$sub = first_sub($rs);
ok($sub && !exists $sub->{json}{state}, '?since=3&epoch=E: no state');
is(seqs(deltas_until($rs, 5)), '4,5', '?since=3&epoch=E replays 4,5');
$rs->close;

$rs = sse('s1&since=4');
$sub = first_sub($rs);
ok($sub && !exists $sub->{json}{state}, '?since=4 without epoch: no state');
is(seqs(deltas_until($rs, 5)), '5', '?since=4 replays 5');
$rs->close;

$rs = sse('s1', headers => ['Last-Event-ID: someotherepoch:2']);
$sub = first_sub($rs);
ok($sub && ref $sub->{json}{state} eq 'HASH', 'Last-Event-ID with another epoch: state');
is($sub && $sub->{json}{epoch}, $epoch, '... and the real epoch');
is(seqs(deltas_until($rs, 5)), '1,2,3,4,5', '... then deltas after state.seq');
$rs->close;

# live continues after resume
$rs = sse('s1', headers => ["Last-Event-ID: $epoch:5"]);
first_sub($rs);
$w->send_json({ type => 'delta', doc => 's1', id => 'w6', data => 6 });
is(seqs(deltas_until($rs, 6)), '6', 'resumed stream gets live deltas');
is(seqs(deltas_until($s, 6)), '6', 'original stream too');
$rs->close;

# --- bad requests
# ASSUMPTION: an SSE request without a document (empty collab_doc) is a 400
my $bad = $t->sse(path => '/collab');
is($bad->status, 400, 'SSE without doc => 400');
# ASSUMPTION: an SSE request with an invalid doc id is a 400
$bad = $t->sse(path => '/collab?doc=a%20b');
is($bad->status, 400, 'SSE with an invalid doc id => 400');

# --- abrupt disconnects do not disturb the rest
my @many = map { sse('s1') } 1 .. 20;
first_sub($_) for @many;
$_->close for @many;
$w->send_json({ type => 'delta', doc => 's1', id => 'w7', data => 7 });
ok($w->wait_for({ type => 'ack', id => 'w7' }, 5), 'delta after 20 SSE clients vanished');
is(seqs(deltas_until($s, 7)), '7', 'the remaining stream still gets it');
$t->idle(1.5);    # a heartbeat goes to the closed sockets

$s->close;
$w->close;

$t->done;
done_testing;
