#!/usr/bin/perl

# collab_conflict reject-stale: a delta whose base is not the current seq
# (behind or ahead of the head) gets nack conflict carrying the head, and
# is not stored; deltas without base are appended; a retry of a stored op
# is acked whatever its base; of two deltas on the same base sent through
# two nginx instances at once, exactly one is acked, round after round.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;
use Collab::WS;
use JSON::PP ();

my $t = Collab::Test->new(timeout => 120);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 2);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_conflict reject-stale;
        }
        location = /accept {
            collab;
        }
    }
EOF
$t->start_nginx;
$t->start_nginx(name => 'b');

sub delta {
    my ($ws, $doc, $id, $base, $data) = @_;
    $ws->send_json({ type => 'delta', doc => $doc, id => $id,
                     (defined $base ? (base => $base) : ()), data => $data });
    return $ws->wait_for(sub {
        my $m = shift;
        ($m->{type} eq 'ack' || $m->{type} eq 'nack') && ($m->{id} // '') eq $id
    }, 10);
}

# --- one writer: base behind, equal, ahead; no base; retries
{
    my $ws = $t->ws_session;
    my $m = delta($ws, 'rs1', 'n1', undef, 1);
    is($m && $m->{type}, 'ack', 'no base: appended');
    $m = delta($ws, 'rs1', 'b1', 1, 2);
    ok($m && $m->{type} eq 'ack' && $m->{seq} == 2, 'base == head: appended as seq 2');
    $m = delta($ws, 'rs1', 'old', 1, 3);
    is($m && $m->{type}, 'nack', 'base behind the head: nack');
    is($m && $m->{code}, 'conflict', '... conflict');
    is($m && $m->{seq}, 2, '... carrying the current seq');
    like($m && $m->{message}, qr/\b2\b/, '... and names it in the message');
    $m = delta($ws, 'rs1', 'ahead', 5, 4);
    ok($m && $m->{type} eq 'nack' && $m->{code} eq 'conflict' && $m->{seq} == 2,
       'base ahead of the head: nack conflict with the current seq');
    $m = delta($ws, 'rs1', 'zero', 0, 5);
    ok($m && $m->{type} eq 'nack' && $m->{code} eq 'conflict', 'base 0 on a head of 2: conflict');
    is($t->log_len('rs1'), 2, 'refused deltas are not stored');
    is($t->redis('HGET', 'collab:{rs1}:state', 'head'), '2', 'head unchanged');
    ok(!defined $t->redis('HGET', 'collab:{rs1}:ops', '9:anonymous0:old'), 'refused op not recorded');
    $m = delta($ws, 'rs1', 'old', 2, 3);
    ok($m && $m->{type} eq 'ack' && $m->{seq} == 3, 'the refused id, rebased on the head: appended');
    $m = delta($ws, 'rs1', 'b1', 0, 2);
    ok($m && $m->{type} eq 'ack' && $m->{seq} == 2, 'retry of a stored op with a stale base: acked with its seq');
    $m = delta($ws, 'rs1', 'n2', undef, 6);
    ok($m && $m->{type} eq 'ack' && $m->{seq} == 4, 'no base: appended whatever the head');
    $m = delta($ws, 'fresh', 'f1', 0, 1);
    ok($m && $m->{type} eq 'ack' && $m->{seq} == 1, 'base 0 on a new document: appended');
    $ws->close;
}

# --- POST answers the same way
{
    my $r = $t->post('/collab', [
        { type => 'delta', doc => 'rs2', id => 'p1', base => 0, data => 1 },
        { type => 'delta', doc => 'rs2', id => 'p2', base => 0, data => 2 },
        { type => 'delta', doc => 'rs2', id => 'p3', base => 7, data => 3 },
    ]);
    is($r->{status}, 200, 'POST: 200');
    my $j = $r->{json} || [];
    is($j->[0]{type}, 'ack', 'POST: first on base 0 acked');
    ok($j->[1]{type} eq 'nack' && $j->[1]{code} eq 'conflict' && $j->[1]{seq} == 1,
       'POST: second on base 0 refused with seq 1');
    ok($j->[2]{type} eq 'nack' && $j->[2]{code} eq 'conflict', 'POST: base ahead refused');
}

# --- accept (the default) appends whatever the base
{
    my $r = $t->post('/accept', [
        { type => 'delta', doc => 'acc', id => 'a1', base => 0, data => 1 },
        { type => 'delta', doc => 'acc', id => 'a2', base => 0, data => 2 },
        { type => 'delta', doc => 'acc', id => 'a3', base => 9, data => 3 },
    ]);
    is(join(',', map { $_->{type} } @{ $r->{json} || [] }), 'ack,ack,ack',
       'collab_conflict accept: every base appended');
}

# --- two instances race on the same base: exactly one wins each round
{
    my $wa = $t->ws_session;
    my $wb = $t->ws_session(instance => 'b');
    my ($ok, $both, $none) = (0, 0, 0);
    my $head = 0;
    for my $round (1 .. 30) {
        $wa->send_json({ type => 'delta', doc => 'race', id => "a$round", base => $head, data => "a$round" });
        $wb->send_json({ type => 'delta', doc => 'race', id => "b$round", base => $head, data => "b$round" });
        my $ma = $wa->wait_for(sub { ($_[0]{id} // '') eq "a$round" }, 10);
        my $mb = $wb->wait_for(sub { ($_[0]{id} // '') eq "b$round" }, 10);
        my @acked = grep { $_ && $_->{type} eq 'ack' } $ma, $mb;
        my @lost = grep { $_ && $_->{type} eq 'nack' && $_->{code} eq 'conflict' } $ma, $mb;
        if (@acked == 1 && @lost == 1 && $acked[0]{seq} == $head + 1 && $lost[0]{seq} == $head + 1) {
            $ok++;
        }
        $both++ if @acked == 2;
        $none++ if @acked == 0;
        $head++ if @acked;
        $head++ if @acked == 2;
    }
    is($ok, 30, 'every round: one ack at head+1, one conflict naming head+1');
    is($both, 0, 'never both acked');
    is($none, 0, 'never both refused');
    is($t->log_len('race'), 30, 'the log holds exactly the winners');
    $wa->close;
    $wb->close;
}

# --- clients/js (t/client/conflict.mjs): the rejection carries the head, and a rebase on it works
SKIP: {
    my ($node) = grep { -x } map { "$_/node" } split /:/, $ENV{PATH};
    skip 'node is not installed', 4 unless $node;
    my $url = 'ws://127.0.0.1:' . $t->port . '/collab';
    my $out = `$node --no-warnings --experimental-websocket $FindBin::Bin/client/conflict.mjs $url js-cf 2>&1`;
    my ($line) = $out =~ /^(\{.*\})\s*$/m;
    my $r = eval { JSON::PP::decode_json($line // '') } // {};
    is($r->{a} && $r->{a}{seq}, 1, 'clients/js: the first delta on base 0 is stored')
        or diag $out;
    is($r->{b} && $r->{b}{rejected} && $r->{b}{rejected}{code}, 'conflict',
       'clients/js: the second is rejected with conflict');
    is($r->{b} && $r->{b}{rejected} && $r->{b}{rejected}{seq}, 1, '... carrying the head');
    is($r->{rebased} && $r->{rebased}{seq}, 2, '... and stored once rebased on it');
}

$t->done;
done_testing;
