#!/usr/bin/perl

# Redis restarted without its data: the document's log starts again under a
# new epoch.  Every member of the old log, on every worker, must hear of it
# (resync); none may go on with its position in the old log, which would
# make it skip the new log's first deltas (seq <= its old position) without
# a word.  The first read after the reconnect creates the new epoch, and the
# "reset" it publishes may come before the worker subscribed the channel
# again, so the read itself must reset every member, not only its own.
# Case 2 makes that order certain: a member whose queue is above half of
# collab_send_queue is not read at the reconnect; the new log grows past
# its old position before it drains; then its read must not serve the new
# log's entries as if they followed the old ones.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;
use Collab::WS;

my $t = Collab::Test->new(timeout => 90);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s connect_timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT2%% sndbuf=8k;
        location = /collab {
            collab;
            collab_ping 30s;
            collab_rate off;
            collab_send_queue 128k;
            collab_send_timeout 60s;
        }
    }
EOF
$t->start_nginx;

my $DOC = 'lost';
my @subs = map { $t->ws_session } 1 .. 3;
is($t->subscribe($_, $DOC)->{type}, 'subscribed', 'a member of the document') for @subs;
my $w = $t->ws_session;
for my $i (1 .. 5) {
    $w->send_json({ type => 'delta', doc => $DOC, id => "old-$i", data => $i });
    ok($w->wait_for({ type => 'ack', id => "old-$i" }, 5), "old log: delta $i acked");
}
for my $k (0 .. $#subs) {
    my @seq;
    while (@seq < 5) {
        my $m = $subs[$k]->wait_for({ type => 'delta' }, 5) or last;
        push @seq, $m->{seq};
    }
    is("@seq", '1 2 3 4 5', "member $k has the old log up to 5");
}

# case 2: a stalled member of another document, its queue above half
my $DOC2 = 'lost2';
my $b = Collab::WS->new(port => $t->port2, rcvbuf => 4096, pump => 0);
ok($b->ok && $b->wait_for('welcome', 5), 'a member that stalls');
is($t->subscribe($b, $DOC2)->{type}, 'subscribed', '... subscribed to another document');
# a member that reads: its read after the reconnect makes the new log
my $a2 = $t->ws_session;
is($t->subscribe($a2, $DOC2)->{type}, 'subscribed', '... with a member that reads');
for my $i (1 .. 24) {
    $w->send_json({ type => 'delta', doc => $DOC2, id => "o2-$i",
                    data => { i => $i, pad => 'x' x 4000 } });
    ok($w->wait_for({ type => 'ack', id => "o2-$i" }, 5), "old log 2: delta $i acked")
        or last;
}

$t->kill_redis;
unlink glob($t->dir . '/redis/*.rdb'), glob($t->dir . '/redis/*.aof');
$t->restart_redis;

# the new log: a writer that retries until Redis is back
sub append_new {
    my ($doc, $id) = @_;
    my $deadline = time + 20;
    while (time < $deadline) {
        $w->send_json({ type => 'delta', doc => $doc, id => $id, data => $id });
        my $m = $w->wait_for(sub { ($_[0]{id} // '') eq $id }, 3);
        return $m if $m && $m->{type} eq 'ack';
        $t->idle(0.2);
    }
    return undef;
}
my $ack = append_new($DOC, 'new-1');
ok($ack && $ack->{seq} == 1, 'the new log starts at seq 1');

ok($a2->wait_for({ type => 'resync' }, 10), 'the reading member of it resyncs');
# the new log of the stalled member's document grows past its old position
my $n2 = 0;
$n2++ while $n2 < 30 && append_new($DOC2, 'n2-' . ($n2 + 1));
is($n2, 30, 'new log 2: 30 deltas acked, past the old position 24');
for my $i (2 .. 3) {
    $w->send_json({ type => 'delta', doc => $DOC, id => "new-$i", data => "n$i" });
    ok($w->wait_for({ type => 'ack', id => "new-$i" }, 5), "new log: delta $i acked");
}

# every member: a resync (then, subscribed again, the new log), never silence
for my $k (0 .. $#subs) {
    my $m = $subs[$k]->wait_for(sub { $_[0]{type} =~ /^(resync|delta)$/ }, 10);
    ok($m && $m->{type} eq "resync", "member $k is told the log changed ("
       . ($m ? $m->{reason} // $m->{type} : "nothing") . ")")
        or diag explain $m;
    my $s = $t->subscribe($subs[$k], $DOC);
    my @seq;
    while (@seq < 3) {
        my $d = $subs[$k]->wait_for({ type => 'delta' }, 5) or last;
        push @seq, $d->{seq};
    }
    is("@seq", '1 2 3', "member $k then has the new log");
}

# the stalled member reads: what was queued of the old log, then a resync,
# never the new log's 25.. as if they followed the old 24
$b->pump_on(1);
my (@old, @after, $resync);
my $until = time + 20;
while (time < $until) {
    my $m = $b->recv_json($until - time) or last;
    if ($m->{type} eq 'resync') { $resync = $m; last }
    next unless $m->{type} eq 'delta';
    if (!@after && $m->{seq} == @old + 1 && ref $m->{data} eq 'HASH') {
        push @old, $m->{seq};
    } else {
        push @after, $m->{seq};
    }
}
ok($resync, 'the stalled member gets a resync once it reads'
   . ($resync ? " ($resync->{reason})" : ''));
is(scalar @after, 0, '... and no delta of the new log before it')
    or diag "old: @old; then: @after";

$t->done;
done_testing;
