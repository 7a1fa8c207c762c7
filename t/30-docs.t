#!/usr/bin/perl

# Documents over WebSocket: subscribe/unsubscribe, several docs and
# collab_max_docs, dense seq and acks, fan-out, idempotent retries, replay
# with since, state + tail, `state` snapshots, epochs.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use JSON::PP;
use Collab::Test;

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

my $t = Collab::Test->new(timeout => 120);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 2);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_max_docs 3;
        }
    }
EOF
$t->start_nginx;

my $n = 0;
sub delta {
    my ($ws, $doc, $id, $data, %o) = @_;
    $ws->send_json({ type => 'delta', doc => $doc, id => $id, data => $data, %o });
}

sub ack_for {
    my ($ws, $id, $timeout) = @_;
    return $ws->wait_for(sub {
        ($_[0]{type} eq 'ack' || $_[0]{type} eq 'nack') && ($_[0]{id} // '') eq $id
    }, $timeout // 5);
}

# deltas of $doc until seq $upto (or timeout); returns the list
sub deltas_until {
    my ($ws, $doc, $upto, $timeout) = @_;
    my @d;
    my $deadline = time + ($timeout // 5);
    while (time < $deadline) {
        my $m = $ws->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{doc} eq $doc },
            $deadline - time) or last;
        push @d, $m;
        last if $m->{seq} >= $upto;
    }
    return @d;
}

sub no_delta {
    my ($ws, $doc, $secs) = @_;
    return !$ws->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{doc} eq $doc }, $secs);
}

sub seqs { join ',', map { $_->{seq} } @_ }

# --- subscribe to a new doc
my $a = $t->ws_session;
my $b = $t->ws_session;

my $s = $t->subscribe($a, 'd1');
is($s && $s->{type}, 'subscribed', 'subscribed d1') or diag explain $s;
is($s->{doc}, 'd1', 'subscribed.doc');
is($s->{role}, 'editor', 'role editor with auth off');
ok(defined $s->{epoch} && length $s->{epoch}, 'subscribed.epoch set');
is($s->{seq}, 0, 'seq 0 on a new doc');
ok(ref $s->{state} eq 'HASH', 'state present without since');
is($s->{state}{seq}, 0, 'state.seq 0');
ok(exists $s->{state}{data} && !defined $s->{state}{data}, 'state.data null without a snapshot');
my $epoch = $s->{epoch};

my $sb = $t->subscribe($b, 'd1');
is($sb && $sb->{epoch}, $epoch, 'second subscriber sees the same epoch');

# --- deltas: dense seq, acks, fan-out
my @acks;
for my $i (1 .. 5) {
    delta($a, 'd1', "a$i", { n => $i, text => "change $i" });
    my $ack = ack_for($a, "a$i");
    push @acks, $ack;
}
is(join(',', map { $_ && $_->{type} } @acks), join(',', ('ack') x 5), '5 acks');
is(seqs(@acks), '1,2,3,4,5', 'acks carry dense seq 1..5');
is(join(',', map { $_->{doc} } @acks), join(',', ('d1') x 5), 'acks carry the doc');

my @bd = deltas_until($b, 'd1', 5);
is(seqs(@bd), '1,2,3,4,5', 'other subscriber gets deltas 1..5 in order');
is(join(',', map { $_->{id} } @bd), 'a1,a2,a3,a4,a5', 'with their ids');
is_deeply($bd[2]{data}, { n => 3, text => 'change 3' }, 'with their data');
is($bd[0]{user}, 'anonymous', 'delta.user');
my ($rs, $rus) = @{ $t->redis('TIME') };
my $now_ms = $rs * 1000 + int($rus / 1000);
ok($bd[0]{ts} =~ /^\d+$/ && abs($bd[0]{ts} - $now_ms) < 60_000, 'delta.ts is Redis time in ms')
    or diag "ts $bd[0]{ts} vs $now_ms";

my @ad = deltas_until($a, 'd1', 5);
is(seqs(@ad), '1,2,3,4,5', 'the sender gets its own deltas via fan-out');

is($t->log_len('d1'), 5, 'XLEN collab:{d1}:log = 5');
my @log = $t->log_entries('d1');
is(join(',', map { $_->{seq} } @log), '1,2,3,4,5', 'log entries carry seq 1..5');
is(join(',', map { $_->{id} } @log), 'a1,a2,a3,a4,a5', 'log entries carry the op ids');
is_deeply(eval { $JSON->decode($log[0]{data}) }, { n => 1, text => 'change 1' },
    'log entry data is the JSON of the delta');
is($log[0]{user}, 'anonymous', 'log entry user');
ok(($log[0]{ts} // '') =~ /^\d+$/, 'log entry ts');
is($t->redis('HGET', 'collab:{d1}:state', 'epoch'), $epoch, 'epoch stored in collab:{d1}:state');

# --- idempotent retry
delta($a, 'd1', 'a3', { n => 3, text => 'change 3' });
my $r = ack_for($a, 'a3');
is($r && $r->{type}, 'ack', 'retry acked');
is($r && $r->{seq}, 3, 'retry acked with its original seq');
is($t->log_len('d1'), 5, 'retry not stored again (XLEN still 5)');
# ASSUMPTION: idempotency is keyed on (user, id) alone: a retry with other
# data still gets the original seq and is not stored.
delta($a, 'd1', 'a2', { other => 1 });
$r = ack_for($a, 'a2');
is($r && $r->{seq}, 2, 'retry with different data acked with the original seq');
is($t->log_len('d1'), 5, 'and not stored');

delta($a, 'd1', 'a6', 'six');
is((ack_for($a, 'a6') // {})->{seq}, 6, 'next delta gets seq 6');
@bd = deltas_until($b, 'd1', 6);
is(seqs(@bd), '6', 'retries are not fanned out again (no duplicate before seq 6)');
deltas_until($a, 'd1', 6);

# --- replay with since
my $c = $t->ws_session;
$s = $t->subscribe($c, 'd1', since => 2, epoch => $epoch);
is($s && $s->{type}, 'subscribed', 'subscribe with since=2');
ok(!exists $s->{state}, 'no state when since is served');
is($s->{seq}, 6, 'subscribed.seq = head');
is($s->{epoch}, $epoch, 'same epoch');
my @cd = deltas_until($c, 'd1', 6);
is(seqs(@cd), '3,4,5,6', 'replay sends exactly the missing deltas 3..6');
is(join(',', map { $_->{id} } @cd), 'a3,a4,a5,a6', 'replayed ids');
ok(no_delta($c, 'd1', 0.5), 'nothing more after the replay');
$c->close;

$c = $t->ws_session;
$s = $t->subscribe($c, 'd1', since => 4);
ok($s && !exists $s->{state}, 'since without epoch: no state');
is(seqs(deltas_until($c, 'd1', 6)), '5,6', 'since=4 without epoch replays 5,6');
$c->close;

$c = $t->ws_session;
$s = $t->subscribe($c, 'd1', since => 0, epoch => $epoch);
ok($s && !exists $s->{state}, 'since=0: no state');
is(seqs(deltas_until($c, 'd1', 6)), '1,2,3,4,5,6', 'since=0 replays the whole log');
$c->close;

$c = $t->ws_session;
$s = $t->subscribe($c, 'd1', since => 6, epoch => $epoch);
ok($s && !exists $s->{state}, 'since=head: no state');
ok(no_delta($c, 'd1', 0.5), 'since=head: no deltas');
delta($a, 'd1', 'a7', 7);
is(seqs(deltas_until($c, 'd1', 7)), '7', 'then live deltas');
$c->close;

# subscribe without since: state + tail
$c = $t->ws_session;
$s = $t->subscribe($c, 'd1');
ok($s && ref $s->{state} eq 'HASH', 'no since: state');
is($s->{state}{seq}, 0, 'state.seq 0 without a snapshot');
is(seqs(deltas_until($c, 'd1', 7)), '1,2,3,4,5,6,7', 'followed by the whole tail');
$c->close;

# ASSUMPTION: a since beyond the head cannot be served: state + fresh start
$c = $t->ws_session;
$s = $t->subscribe($c, 'd1', since => 999, epoch => $epoch);
ok($s && ref $s->{state} eq 'HASH', 'since beyond head: state instead of replay');
$c->close;

# epoch mismatch => state and the real epoch
$c = $t->ws_session;
$s = $t->subscribe($c, 'd1', since => 3, epoch => 'not-the-epoch');
ok($s && ref $s->{state} eq 'HASH', 'epoch mismatch: state sent');
is($s && $s->{epoch}, $epoch, 'epoch mismatch: the real epoch is announced');
is(seqs(deltas_until($c, 'd1', 7)), '1,2,3,4,5,6,7', 'epoch mismatch: deltas after state.seq');
$c->close;

# --- state snapshot
$a->drain(0.2);
$a->send_json({ type => 'state', doc => 'd1', seq => 4, data => { snap => 4 } });
# ASSUMPTION: DESIGN lists the fields of collab:{doc}:state as `epoch, seq,
# data (snapshot), ts`: `seq` is read as the seq of the snapshot in `data`
# (what an application reading the hash needs), not the head of the log.
ok(Collab::Test::wait_until(sub {
    ($t->redis('HGET', 'collab:{d1}:state', 'seq') // '') eq '4' }, 3),
    'state message stored: collab:{d1}:state seq = 4')
    or diag 'collab:{d1}:state = ' . join ' ', @{ $t->redis('HGETALL', 'collab:{d1}:state') };
is_deeply(eval { $JSON->decode($t->redis('HGET', 'collab:{d1}:state', 'data')) }, { snap => 4 },
    'state data stored as JSON');
is($t->redis('HGET', 'collab:{d1}:state', 'epoch'), $epoch, 'epoch kept');
ok(($t->redis('HGET', 'collab:{d1}:state', 'ts') // '') =~ /^\d+$/, 'state ts stored');
ok(!$a->wait_for('error', 0.3), 'no error for a state message');

$c = $t->ws_session;
$s = $t->subscribe($c, 'd1');
is($s && $s->{state} && $s->{state}{seq}, 4, 'new subscriber: state.seq = 4');
is_deeply($s && $s->{state} && $s->{state}{data}, { snap => 4 }, 'new subscriber: state.data');
is($s && $s->{seq}, 7, 'subscribed.seq = head 7');
is(seqs(deltas_until($c, 'd1', 7)), '5,6,7', 'tail after the snapshot: 5,6,7');
$c->close;

# --- unsubscribe
$b->send_json({ type => 'unsubscribe', doc => 'd1' });
# ASSUMPTION: a client unsubscribe may be answered (`unsubscribed`) or not;
# either way no delta of d1 reaches it afterwards.
$b->drain(0.3);
delta($a, 'd1', 'a8', 8);
is((ack_for($a, 'a8') // {})->{seq}, 8, 'a8 acked');
ok(no_delta($b, 'd1', 0.7), 'no delta after unsubscribe');

# --- several docs and collab_max_docs 3
$s = $t->subscribe($a, 'd2');
is($s && $s->{type}, 'subscribed', 'second doc');
$s = $t->subscribe($a, 'd3');
is($s && $s->{type}, 'subscribed', 'third doc');
$s = $t->subscribe($a, 'd4');
is($s && $s->{type}, 'error', '4th doc over collab_max_docs => error');
is($s && $s->{code}, 'too_large', '... code too_large');

delta($a, 'd2', 'x1', 'two');
delta($a, 'd3', 'y1', 'three');
delta($a, 'd2', 'x2', 'two again');
is((ack_for($a, 'x1') // {})->{seq}, 1, 'd2 has its own seq');
is((ack_for($a, 'y1') // {})->{seq}, 1, 'd3 has its own seq');
is((ack_for($a, 'x2') // {})->{seq}, 2, 'd2 seq 2');
my @d2 = deltas_until($a, 'd2', 2);
is(seqs(@d2), '1,2', 'd2 deltas to the subscriber');
is(seqs(deltas_until($a, 'd3', 1)), '1', 'd3 delta to the subscriber');

delta($a, 'd1', 'a9', 9);
is((ack_for($a, 'a9') // {})->{seq}, 9, 'session still works after too_large');

# ASSUMPTION: unsubscribing frees a slot for another doc
$a->send_json({ type => 'unsubscribe', doc => 'd3' });
ok($a->wait_for({ type => 'unsubscribed', doc => 'd3' }, 5), 'unsubscribed d3');
$s = $t->subscribe($a, 'd4');
is($s && $s->{type}, 'subscribed', 'after unsubscribe a new doc fits');

# ASSUMPTION: subscribing twice to the same doc is not an error and does
# not double the fan-out
$s = $t->subscribe($a, 'd2', since => 2, epoch => $t->redis('HGET', 'collab:{d2}:state', 'epoch') // '');
is($s && $s->{type}, 'subscribed', 're-subscribe to a subscribed doc');
$b->send_json({ type => 'delta', doc => 'd2', id => 'b-x3', data => 3 });
is((ack_for($b, 'b-x3') // {})->{seq}, 3, 'delta from another session');
my @got = deltas_until($a, 'd2', 3);
is(seqs(@got), '3', 'received once');
ok(no_delta($a, 'd2', 0.5), 'no duplicate after a double subscribe');

# ASSUMPTION: a delta to a doc the session has not subscribed is accepted
# (like POST); the sender gets no fan-out copy
delta($b, 'd5', 'b1', 'unsubscribed write');
my $ack = ack_for($b, 'b1');
is($ack && $ack->{type}, 'ack', 'delta without subscription acked');
is($ack && $ack->{seq}, 1, '... seq 1');
ok(no_delta($b, 'd5', 0.3), '... and not fanned out to the non-subscribed sender');

# --- pipelined deltas: acks in submission order
my $p = $t->ws_session;
$p->send_raw(join '', map {
    Collab::WS::build_frame(opcode => 1,
        payload => $JSON->encode({ type => 'delta', doc => 'pipe', id => "p$_", data => $_ }))
} 1 .. 50);
my @pa;
for (1 .. 50) {
    my $m = $p->wait_for(sub { $_[0]{type} =~ /^n?ack$/ }, 5) or last;
    push @pa, $m;
}
is(scalar @pa, 50, '50 pipelined deltas answered');
# ASSUMPTION: a session's acks come in submission order, with increasing seq
is(join(',', map { $_->{id} } @pa), join(',', map { "p$_" } 1 .. 50), 'acks in submission order');
is(seqs(@pa), join(',', 1 .. 50), 'seqs follow submission order');
$p->close;

# --- a big delta (default collab_max_message 64k)
my $big = 'x' x 50_000;
$c = $t->ws_session;
$t->subscribe($c, 'bigdoc');
delta($a, 'bigdoc', 'big1', { blob => $big });
is((ack_for($a, 'big1') // {})->{type}, 'ack', '50 KB delta acked');
my ($bdm) = deltas_until($c, 'bigdoc', 1);
ok($bdm && $bdm->{data}{blob} eq $big, '50 KB delta fanned out intact');
$c->close;

# --- epoch: a lost log gets a new epoch, an old since is not served
my $e1 = $t->ws_session;
$s = $t->subscribe($e1, 'ep');
my $old_epoch = $s && $s->{epoch};
delta($e1, 'ep', "e$_", $_) for 1 .. 3;
ack_for($e1, 'e3');
$e1->close;
# the worker lets the document go: its channel has no subscriber left
ok(Collab::Test::wait_until(sub { !@{ $t->redis('PUBSUB', 'CHANNELS', 'collab:{ep}') } }, 10),
    'the document is released once its last session closed');
$t->redis('DEL', 'collab:{ep}:log', 'collab:{ep}:state');
# ASSUMPTION: with no session on the doc, the module reads the epoch from
# Redis on subscribe and makes a new one when the log is gone
my $e2 = $t->ws_session;
$s = $t->subscribe($e2, 'ep', since => 3, epoch => $old_epoch);
ok($s && ref $s->{state} eq 'HASH', 'log lost: since with the old epoch gets state');
ok($s && $s->{epoch} && $s->{epoch} ne $old_epoch, 'log lost: a new epoch')
    or diag "old $old_epoch new " . ($s && $s->{epoch} // 'none');
delta($e2, 'ep', 'e-new', 'n');
is((ack_for($e2, 'e-new') // {})->{seq}, 1, 'the new log starts at seq 1');
$e2->close;

$a->close;
$b->close;

$t->done;
done_testing;
