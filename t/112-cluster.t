#!/usr/bin/perl

# Redis Cluster: 3 primaries + 3 replicas on loopback, "collab_redis
# cluster:...".  Writers on two nginx instances over 30 documents spread
# across all shards, retrying on nack and resending some acked ids; two
# subscribers per document (one per instance).  Mid-run the busiest
# document's slot migrates to another primary by hand (SETSLOT MIGRATING /
# IMPORTING, MIGRATE, SETSLOT NODE) while writes go on; then a primary is
# killed: its documents answer "unavailable" until its replica is promoted,
# the others keep working.  Every log is dense, every id stored once at the
# seq it was acked with, and every subscriber ends with exactly the log.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;

my $t = Collab::Test->new(timeout => 180);

# --- configuration
{
    my $conf = <<'EOF';
    collab_redis cluster:127.0.0.1:7000,127.0.0.1:7001;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab { collab; }
    }
EOF
    my ($rc, $out) = $t->check_nginx_conf($conf);
    is($rc, 0, 'nginx -t accepts cluster:host:port,...') or diag $out;
    for my $bad (
        ['collab_redis cluster:;', 'invalid Redis Cluster node ""', 'no seed'],
        ['collab_redis cluster:127.0.0.1:7000,;', 'invalid Redis Cluster node ""',
         'an empty seed'],
        ['collab_redis cluster:nohost.invalid:1;', 'invalid Redis Cluster node',
         'a seed that does not resolve'],
        ['collab_redis cluster:127.0.0.1:7000 db=2;', 'no "db="', 'a database number'],
        ['collab_redis cluster:127.0.0.1:7000 ack=replicated;', 'not supported with a Redis Cluster',
         'ack=replicated'],
    ) {
        (my $c = $conf) =~ s/collab_redis .*?;/$bad->[0]/s;
        ($rc, $out) = $t->check_nginx_conf($c);
        ok($rc != 0 && index($out, $bad->[1]) >= 0, "refused: $bad->[2]") or diag $out;
    }
}

# --- the topology
my @nodes = $t->redis_cluster(primaries => 3, replicas => 1, node_timeout => 2000);
my $SEEDS = join ',', map { '127.0.0.1:' . $t->node_port($_) } @nodes;
pass('a cluster of 3 primaries and 3 replicas');

my $CONF = <<"EOF";
    collab_redis cluster:$SEEDS timeout=3s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_rate off;
            collab_max_docs 32;
        }
    }
EOF
$t->write_nginx_conf($CONF, workers => 2);
$t->start_nginx;
$t->start_nginx(name => 'b');

sub session {
    my (%o) = @_;
    my $ws;
    Collab::Test::wait_until(sub { $ws = eval { $t->ws_session(%o) } }, 20);
    return $ws;
}

# 30 documents, their slots and owners; every primary has some
my @docs = map { "cd$_" } 1 .. 30;
my %slot = map { $_ => $t->redis_at($t->node_port($nodes[0]), 'CLUSTER', 'KEYSLOT',
                                    "collab:{$_}:log") } @docs;
my %owner = map { $_ => $t->cluster_owner($slot{$_}) } @docs;
my %shards;
$shards{ $owner{$_} }++ for @docs;
is(scalar keys %shards, 3, '30 documents over the 3 shards')
    or diag join ' ', map { "$_=$shards{$_}" } sort keys %shards;

# the library is on every primary, in its sharded variant
ok(Collab::Test::wait_until(sub {
    my $w = session();
    $w->send_json({ type => 'delta', doc => $_, id => "warm-$_", data => 0 }) for @docs;
    my %acked;
    Collab::Test::wait_until(sub {
        for my $m ($w->collect(0.01)) {
            $acked{ $m->{doc} } = 1 if $m->{type} eq 'ack';
        }
        return keys %acked == @docs;
    }, 10);
    $w->close(1000);
    return keys %acked == @docs;
}, 30), 'a delta on each of the 30 documents is acked');
for my $p (keys %shards) {
    my $v = $t->redis_at($t->node_port($p), 'FCALL', 'collab_version', 0);
    is(join('.', @$v[0, 2]), '10.1', "$p: the sharded library (collab_version [10, 1, 1])");
}
is((grep { $t->redis_at($t->node_port($owner{$_}), 'XLEN', "collab:{$_}:log") == 1 } @docs),
   30, 'each delta stored on its shard');

# --- the run: subscribers, writers, a reshard, a primary killed
my @subs = map { session(instance => $_ % 2 ? 'b' : undef) } 0 .. 3;
my (%seen, %again, @events);
# sessions 0, 2 on instance a, 1, 3 on b: each document followed on both
for my $k (0 .. 3) {
    for my $d ($k < 2 ? @docs[0 .. 14] : @docs[15 .. 29]) {
        $subs[$k]->send_json({ type => 'subscribe', doc => $d });
        $seen{"$k $d"} = [];
    }
}

sub pump_subs {
    for my $k (0 .. 3) {
        for my $m ($subs[$k]->collect(0.002)) {
            my $key = "$k " . ($m->{doc} // '');
            if ($m->{type} eq 'delta') {
                push @{ $seen{$key} }, "$m->{seq}:$m->{id}" if $m->{id} !~ /^warm-/;
                next;
            }
            if ($m->{type} eq 'resync' || $m->{type} eq 'error'
                || $m->{type} eq 'unsubscribed')
            {
                push @events, "$key $m->{type}:" . ($m->{code} // $m->{reason} // '');
                $seen{$key} = [];
                $again{$key} = time + ($m->{type} eq 'resync' ? 0 : 0.3);
            }
        }
    }
    for my $key (grep { $again{$_} <= time } keys %again) {
        delete $again{$key};
        my ($k, $doc) = split / /, $key;
        $subs[$k]->send_json({ type => 'subscribe', doc => $doc });
    }
}

for my $k (0 .. 3) {
    ok(Collab::Test::wait_until(sub {
        pump_subs();
        return !grep { /^$k / && $again{$_} } keys %again;
    }, 10), "subscriber $k follows its documents");
}

my $PER_WRITER = 60;
my @w = map { session(instance => $_ % 2 ? 'b' : undef) } 0 .. 9;
my (%todo, %acked, %next_try, %resent, %nacked_by_doc, $dup_bad);
srand(12);
for my $wi (0 .. $#w) {
    for my $i (1 .. $PER_WRITER) {
        # a third of the writes go to one hot document
        my $doc = rand() < 0.3 ? $docs[0] : $docs[int rand @docs];
        $todo{"w$wi-$i"} = { w => $wi, doc => $doc, i => $i };
    }
}

# the busiest document's slot moves, one MIGRATE step per round of writes
my ($busy, $mig_step, @mig_keys, %mig, $mig_nacks);
sub node_id { $t->redis_at($t->node_port($_[0]), 'CLUSTER', 'MYID') }
sub migrate_step {
    my $src = $t->node_port($mig{src});
    my $dst = $t->node_port($mig{dst});
    my $s = $mig{slot};
    if ($mig_step == 0) {
        $t->redis_at($dst, 'CLUSTER', 'SETSLOT', $s, 'IMPORTING', node_id($mig{src}));
        $t->redis_at($src, 'CLUSTER', 'SETSLOT', $s, 'MIGRATING', node_id($mig{dst}));
        $mig_step = 1;
    } elsif ($mig_step == 1) {
        my $keys = $t->redis_at($src, 'CLUSTER', 'GETKEYSINSLOT', $s, 2);
        if (@$keys) {
            $t->redis_at($src, 'MIGRATE', '127.0.0.1', $dst, '', 0, 5000, 'KEYS', @$keys);
            $mig{moved} += @$keys;
        } else {
            $mig_step = 2;
        }
    } elsif ($mig_step == 2) {
        my $id = node_id($mig{dst});
        $t->redis_at($dst, 'CLUSTER', 'SETSLOT', $s, 'NODE', $id);
        $t->redis_at($src, 'CLUSTER', 'SETSLOT', $s, 'NODE', $id);
        for my $p (grep { $_ ne $mig{src} && $_ ne $mig{dst} } keys %shards) {
            $t->redis_at($t->node_port($p), 'CLUSTER', 'SETSLOT', $s, 'NODE', $id);
        }
        $mig_step = 3;
        $mig{done_at} = keys %acked;
    }
}

my ($killed, %victim_docs, $kill_time, $victim_up, %acks_during);
my $deadline = time + 60;
while ((%todo || !$killed) && time < $deadline) {
    my $now = time;
    # each writer has one delta in flight: its lowest id not acked yet
    my %head;
    for my $id (keys %todo) {
        my $d = $todo{$id};
        $head{ $d->{w} } = $id if !defined $head{ $d->{w} }
            || $todo{ $head{ $d->{w} } }{i} > $d->{i};
    }
    for my $id (values %head) {
        my $d = $todo{$id};
        next if ($next_try{$id} // 0) > $now;
        # the victim's documents wait while it is stopped and killed
        next if $killed && $killed == 1 && $victim_docs{ $d->{doc} };
        $next_try{$id} = $now + 3;
        $w[$d->{w}]->send_json({ type => 'delta', doc => $d->{doc}, id => $id,
                                 data => { id => $id } });
    }
    Collab::HTTP::idle(0.02);
    for my $wi (0 .. $#w) {
        for my $m ($w[$wi]->collect(0.002)) {
            my $id = $m->{id} // next;
            if ($m->{type} eq 'ack' && $acked{$id}) {
                # an acked id sent again: the same seq, nothing stored
                $dup_bad++ if $acked{$id}{seq} != $m->{seq};
                next;
            }
            next unless $todo{$id};
            if ($m->{type} eq 'ack') {
                $acked{$id} = { seq => $m->{seq}, doc => $todo{$id}{doc} };
                $acks_during{ $owner{ $todo{$id}{doc} } }++ if $killed && !$victim_up;
                delete $todo{$id};
                if (rand() < 0.2) {
                    $resent{$id} = 1;
                    $w[$wi]->send_json({ type => 'delta', doc => $m->{doc}, id => $id,
                                         data => { id => $id } });
                }
            } elsif ($m->{type} eq 'nack') {
                $nacked_by_doc{ $todo{$id}{doc} }{ $m->{code} }++
                    if $killed && !$victim_up;
                $mig_nacks++ if defined $mig_step && !$killed
                    && $todo{$id}{doc} eq $busy;
                $next_try{$id} = time + 0.2;
            }
        }
        if (!$w[$wi]->is_open) {
            $w[$wi] = session(instance => $wi % 2 ? 'b' : undef);
            delete $next_try{$_} for grep { $todo{$_}{w} == $wi } keys %todo;
        }
    }
    pump_subs();

    # the reshard: after 80 acks, the slot of the busiest document
    if (!defined $mig_step && keys %acked >= 150) {
        my %n;
        $n{ $acked{$_}{doc} }++ for keys %acked;
        ($busy) = sort { $n{$b} <=> $n{$a} } keys %n;
        my $src = $owner{$busy};
        my ($dst) = grep { $_ ne $src } sort keys %shards;
        %mig = (slot => $slot{$busy}, src => $src, dst => $dst, moved => 0);
        $mig_step = 0;
    }
    migrate_step() if defined $mig_step && $mig_step < 3;

    # a primary killed: after the reshard, one that the reshard left alone
    if (!$killed && defined $mig_step && $mig_step == 3
        && keys %acked >= $mig{done_at} + 100)
    {
        my ($victim) = grep { $_ ne $mig{src} && $_ ne $mig{dst} } sort keys %shards;
        $victim_docs{$_} = 1 for grep { $owner{$_} eq $victim } @docs;
        $killed = 1;
        $mig{victim} = $victim;
        # let the writes in flight to it end, then make sure its replica has them
        Collab::Test::wait_until(sub {
            for my $wi (0 .. $#w) { $w[$wi]->collect(0.002) }
            pump_subs();
            return 0;
        }, 0.5);
        $t->redis_at($t->node_port($victim), 'WAIT', 1, 5000);
        $t->kill_node($victim, 'KILL');
        $kill_time = time;
        $killed = 2;
        delete $next_try{$_} for keys %todo;
    }
    if ($killed && !$victim_up && $t->cluster_owner($slot{ (keys %victim_docs)[0] })
        && $t->cluster_owner($slot{ (keys %victim_docs)[0] }) ne $mig{victim})
    {
        $victim_up = time;
    }
}
is(scalar keys %todo, 0, 'every delta acked in the end (reshard and failover included)')
    or diag scalar(keys %todo) . ' never acked';
ok($mig{moved} && $mig_step == 3, "the slot of the busiest document ($busy) moved "
   . "from $mig{src} to $mig{dst} mid-run ($mig{moved} keys)");
is($t->cluster_owner($mig{slot}), $mig{dst}, '... and the cluster says so');
my $redirects = () = ($t->error_log . $t->error_log('b')) =~ /: (?:ASK|MOVED) \d+, the command goes to/g;
my $tryagain = () = ($t->error_log . $t->error_log('b')) =~ /TRYAGAIN, the command waits/g;
is($mig_nacks // 0, 0, '... and never refused (no nack for it from the move to the kill)');
my $left = () = ($t->error_log . $t->error_log('b')) =~ /the slot of "collab:\{$busy\}" left/g;
ok($left >= 2, "its subscribers on both instances moved to the new owner (sunsubscribe: $left)");
ok($redirects + $tryagain > 0, "writes during the move were redirected ($redirects MOVED/ASK, "
   . "$tryagain TRYAGAIN)");
ok($victim_up, "primary $mig{victim} killed: its replica took over after "
   . sprintf('%.1f s', ($victim_up // time) - ($kill_time // time)));
my @wrong = grep { !$victim_docs{$_} && $nacked_by_doc{$_}{unavailable} } @docs;
is("@wrong", '', 'documents of the other shards were not refused meanwhile');
ok(scalar(grep { $nacked_by_doc{$_}{unavailable} } keys %victim_docs),
   "the victim's documents got nack unavailable meanwhile");
ok((grep { $_ ne $mig{victim} } keys %acks_during) >= 1,
   'the other shards acked deltas while the victim was down')
    or diag explain \%acks_during;
ok(!$dup_bad, 'acked ids sent again: acked with the same seq ('
   . scalar(keys %resent) . ' resent)');

# --- the logs: dense, each id once, each acked id at its seq
$t->cluster_wait(30);
my ($gaps, $dups, $lost) = (0, 0, 0);
my %log;
for my $doc (@docs) {
    my $node = $t->cluster_owner($slot{$doc});
    my $entries = $t->redis_at($t->node_port($node), 'XRANGE', "collab:{$doc}:log", '-', '+');
    my ($n, %ids) = (0);
    for my $e (@$entries) {
        my %f = @{ $e->[1] };
        $n++;
        $gaps++ if $f{seq} != $n;
        $dups++ if $ids{ $f{id} }++;
        push @{ $log{$doc} }, "$f{seq}:$f{id}" unless $f{id} =~ /^warm-/;
    }
}
for my $id (keys %acked) {
    my $a = $acked{$id};
    $lost++ unless grep { $_ eq "$a->{seq}:$id" } @{ $log{ $a->{doc} } || [] };
}
is($gaps, 0, 'seq dense in every log');
is($dups, 0, 'every id stored once (retries and resent acked ids included)');
is($lost, 0, 'every acked delta in its log at its acked seq');

# --- every subscriber ends with exactly the log
my $subs_bad = 0;
for my $key (sort keys %seen) {
    my (undef, $doc) = split / /, $key;
    my $want = join ' ', @{ $log{$doc} || [] };
    Collab::Test::wait_until(sub {
        pump_subs();
        return join(' ', @{ $seen{$key} }) eq $want;
    }, 15);
    next if join(' ', @{ $seen{$key} }) eq $want;
    $subs_bad++;
    diag "$key: subscriber has " . join(' ', @{ $seen{$key} }) . "\n  log has $want";
}
is($subs_bad, 0, 'every subscriber (2 per document) ends with exactly its log');
diag "events: @events" if @events && $subs_bad;

$_->close(1000) for @w, @subs;
$t->allow_log(qr/redis|cluster|slot/i);
$t->done;
done_testing;
