#!/usr/bin/perl

# Redis Sentinel: a primary, two replicas and three sentinels on loopback.
# "collab_redis sentinel:NAME sentinels=..." finds the primary through the
# sentinels and follows a failover; ack=replicated acks a delta only once
# WAIT saw it on a replica.  Each seed kills the primary (SIGKILL) while
# writers on two nginx instances run: no acked delta is lost, every retried
# delta is stored once, seq stays dense, and every subscriber ends with
# exactly the log of the new primary (a fresh start after the failover:
# the new primary fences the documents with a new epoch).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;

my $SEEDS = $ENV{COLLAB_SENTINEL_SEEDS} || 10;

my $t = Collab::Test->new(timeout => 280);

# --- the topology
my @nodes = ('r0', 'r1', 'r2');
my $primary = $t->redis_node('r0', args => ['--repl-diskless-sync-delay', '0']);
for my $r ('r1', 'r2') {
    $t->redis_node($r, args => ['--replicaof', '127.0.0.1', $primary,
                                '--repl-diskless-sync-delay', '0']);
}
my @sentinels;
for my $i (1 .. 3) {
    push @sentinels, $t->redis_node("s$i", sentinel => 1, conf => [
        "sentinel monitor mymaster 127.0.0.1 $primary 2",
        'sentinel down-after-milliseconds mymaster 1500',
        'sentinel failover-timeout mymaster 4000',
        'sentinel parallel-syncs mymaster 2',
    ]);
}
my $SENTINELS = join ',', map { "127.0.0.1:$_" } @sentinels;

# what the sentinels name and is a primary indeed (one of them may lag)
sub primary_port {
    my $any;
    for my $s (@sentinels) {
        my ($a) = $t->redis_at_try($s, 'SENTINEL', 'get-master-addr-by-name', 'mymaster');
        next unless ref $a;
        $any //= $a->[1];
        my ($info) = $t->redis_at_try($a->[1], 'INFO', 'replication');
        return $a->[1] if defined $info && $info =~ /role:master/;
    }
    return $any;
}

sub wait_until {
    my ($what, $timeout, $cond) = @_;
    my $deadline = time + $timeout;
    until ($cond->()) {
        return 0 if time > $deadline;
        Collab::HTTP::idle(0.05);
    }
    return 1;
}

# the replicas are in sync and the sentinels know them
ok(wait_until('replicas', 40, sub {
    return replicas_online($primary) == 2 && settled($primary);
}), 'a primary with two replicas, watched by three sentinels');

my $CONF = <<"EOF";
    collab_redis sentinel:mymaster sentinels=$SENTINELS ack=replicated
                 ack_timeout=1s timeout=3s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_rate off;
        }
    }
EOF

# --- configuration
{
    my ($rc, $out) = $t->check_nginx_conf($CONF);
    is($rc, 0, 'nginx -t accepts sentinel:NAME sentinels=... ack=replicated') or diag $out;
    for my $bad (
        ['collab_redis sentinel:mymaster;', 'sentinels=', 'sentinel: without sentinels='],
        ["collab_redis 127.0.0.1:6379 sentinels=$SENTINELS;", 'sentinel:MASTER-NAME',
         'sentinels= without sentinel:'],
        ['collab_redis sentinel:m sentinels=127.0.0.1:1,;', 'invalid Sentinel address',
         'an empty sentinel address'],
        ['collab_redis sentinel:m sentinels=nohost.invalid:1;', 'invalid Sentinel address',
         'a sentinel name that does not resolve'],
        ['collab_redis 127.0.0.1 ack=replicated:0;', 'ack=replicated:0', 'zero replicas'],
        ['collab_redis 127.0.0.1 ack=replicated:17;', 'ack=replicated:17', 'more than 16'],
        ['collab_redis 127.0.0.1 ack=always;', 'ack=always', 'an unknown ack mode'],
        ['collab_redis 127.0.0.1 ack_timeout=0;', 'ack_timeout=0', 'a zero ack_timeout'],
        ['collab_redis 127.0.0.1 ack=replicated ack_timeout=2s timeout=3s;',
         'more than half of timeout', 'an ack_timeout over half the timeout'],
    ) {
        (my $c = $CONF) =~ s/collab_redis .*?;/$bad->[0]/s;
        ($rc, $out) = $t->check_nginx_conf($c);
        ok($rc != 0 && index($out, $bad->[1]) >= 0, "refused: $bad->[2]") or diag $out;
    }
}

$t->write_nginx_conf($CONF, workers => 2);
$t->start_nginx;
$t->start_nginx(name => 'b');

# sessions are accepted once a worker knows the primary
sub session {
    my (%o) = @_;
    my $ws;
    wait_until('session', 20, sub {
        $ws = eval { $t->ws_session(%o) };
        return $ws;
    });
    return $ws;
}

# --- deltas through the sentinel-found primary, acked after a replica has them
{
    my $w = session();
    ok($w, 'a session through the primary the sentinels named');
    $w->send_json({ type => 'delta', doc => 'basic', id => 'b1', data => { n => 1 } });
    my $a = $w->wait_for(sub { ($_[0]{id} // '') eq 'b1' }, 10);
    is($a && $a->{type}, 'ack', 'a delta is acked with ack=replicated');
    is($a && $a->{seq}, 1, '... as seq 1');
    my $port = primary_port();
    ok(wait_until('replica', 5, sub {
        my $n = 0;
        for my $r (grep { $t->node_port($_) != $port } @nodes) {
            $n++ if ($t->redis_at($t->node_port($r), 'XLEN', 'collab:{basic}:log') // 0) == 1;
        }
        return $n >= 1;
    }), 'the acked delta is on a replica');
    $w->close(1000);
}

# --- replicas that do not confirm: nack unavailable, and the retry is stored once
{
    my $port = primary_port();
    my @reps = grep { $t->node_port($_) != $port } @nodes;
    $t->kill_node($_, 'STOP') for @reps;
    my $w = session();
    $w->send_json({ type => 'delta', doc => 'short', id => 'x1', data => 1 });
    my $n = $w->wait_for(sub { ($_[0]{id} // '') eq 'x1' }, 10);
    is($n && "$n->{type} $n->{code}", 'nack unavailable',
       'replicas that do not answer: nack unavailable after ack_timeout');
    like($n && $n->{message}, qr/retry with the same id/, '... which says to retry with the same id');
    $w->send_json({ type => 'delta', doc => 'short', id => 'x2', data => 2 });
    $n = $w->wait_for(sub { ($_[0]{id} // '') eq 'x2' }, 10);
    is($n && "$n->{type} $n->{code}", 'nack unavailable',
       'the next delta within a second is refused at once');
    is($t->redis_at($port, 'XLEN', 'collab:{short}:log'), 1,
       '... and not stored (the first one was)');
    # the retry through an nginx started now: its connection wrote nothing,
    # so a bare WAIT there would return at once; it must cover the first store
    $t->start_nginx(name => 'c', conf => $CONF);
    my $wc = session(instance => 'c');
    $wc->send_json({ type => 'delta', doc => 'short', id => 'x1', data => 1 });
    $n = $wc->wait_for(sub { ($_[0]{id} // '') eq 'x1' }, 10);
    is($n && "$n->{type} $n->{code}", 'nack unavailable',
       'a retry elsewhere is not acked while the replicas still lack the delta')
        or diag explain $n;
    $wc->close(1000);
    $t->stop_nginx(name => 'c');
    $t->kill_node($_, 'CONT') for @reps;
    ok(wait_until('replicas', 40, sub { replicas_online($port) == 2 && settled($port) }),
       'the replicas are back');
    my $a;
    wait_until('ack', 20, sub {
        $w->send_json({ type => 'delta', doc => 'short', id => 'x1', data => 1 });
        $a = $w->wait_for(sub { ($_[0]{id} // '') eq 'x1' }, 5);
        return $a && $a->{type} eq 'ack' || !$a || Collab::HTTP::idle(0.3);
    });
    is($a && "$a->{type} $a->{seq}", 'ack 1', 'the retry of the unconfirmed delta is acked with its seq');
    is($t->redis_at($port, 'XLEN', 'collab:{short}:log'), 1, '... stored once');
    $w->close(1000);
}

# --- failover under load, $SEEDS times
my $DOCS = 4;
my $PER_WRITER = 15;
my %dead;    # name => port of the killed primary, restarted as a replica

sub node_of_port {
    my ($port) = @_;
    for my $n (@nodes) { return $n if $t->node_port($n) && $t->node_port($n) == $port }
    return undef;
}

# every sentinel sees two healthy replicas of $port (else a kill right
# now could find no replica it may promote)
sub settled {
    my ($port) = @_;
    for my $s (@sentinels) {
        my ($m) = $t->redis_at_try($s, 'SENTINEL', 'get-master-addr-by-name', 'mymaster');
        return 0 unless ref $m && $m->[1] == $port;
        my ($r) = $t->redis_at_try($s, 'SENTINEL', 'replicas', 'mymaster');
        return 0 unless ref $r;
        my $good = 0;
        for my $x (@$r) {
            my %f = @$x;
            $good++ if $f{flags} eq 'slave' && $f{'master-link-status'} eq 'ok'
                && $f{'master-port'} == $port && $f{'info-refresh'} < 3000;
        }
        return 0 unless $good == 2;
    }
    return 1;
}

sub replicas_online {
    my ($port) = @_;
    my ($info) = $t->redis_at_try($port, 'INFO', 'replication');
    return 0 unless defined $info && $info =~ /role:master/;
    return scalar(() = $info =~ /state=online/g);
}

my ($lost, $dups, $gaps, $subs_bad, $seeds_done) = (0, 0, 0, 0, 0);
for my $seed (1 .. $SEEDS) {
    srand($seed);
    my @docs = map { "f$seed-$_" } 1 .. $DOCS;

    # subscribers: start afresh on every resync, as a client does
    my @subs = map { session(instance => $_ % 2 ? 'b' : undef) } 0 .. $DOCS - 1;
    my @seen = map { [] } @docs;
    for my $k (0 .. $#docs) {
        $subs[$k]->send_json({ type => 'subscribe', doc => $docs[$k] });
    }
    my (@again, @events);
    my $pump_subs = sub {
        for my $k (0 .. $#docs) {
            for my $m ($subs[$k]->collect(0.002)) {
                if ($m->{type} eq 'delta') {
                    push @{ $seen[$k] }, "$m->{seq}:$m->{id}";
                    next;
                }
                push @{ $events[$k] }, $m->{type} . ($m->{code} || $m->{reason}
                                                     ? ':' . ($m->{code} || $m->{reason}) : '');
                if ($m->{type} eq 'resync' || $m->{type} eq 'error'
                    || $m->{type} eq 'unsubscribed')
                {
                    # a fresh start (the store may be failing over: retry)
                    $seen[$k] = [];
                    $again[$k] = time + ($m->{type} eq 'resync' ? 0 : 0.3);
                }
            }
            if (defined $again[$k] && $again[$k] <= time) {
                undef $again[$k];
                $subs[$k]->send_json({ type => 'subscribe', doc => $docs[$k] });
            }
        }
    };

    # writers on both instances; a nack or a lost session: the same id again
    my @w = map { session(instance => $_ % 2 ? 'b' : undef) } 0 .. 3;
    my (%todo, %acked, %next_try);
    for my $wi (0 .. $#w) {
        for my $i (1 .. $PER_WRITER) {
            my $id = "s$seed-w$wi-$i";
            $todo{$id} = { w => $wi, doc => $docs[int rand @docs], i => $i };
        }
    }
    my $killed = 0;
    my $deadline = time + 60;
    while (%todo && time < $deadline) {
        my $now = time;
        for my $id (sort { $todo{$a}{i} <=> $todo{$b}{i} } keys %todo) {
            my $d = $todo{$id};
            next if ($next_try{$id} // 0) > $now;
            $next_try{$id} = $now + 3;    # until an answer comes
            $w[$d->{w}]->send_json({ type => 'delta', doc => $d->{doc}, id => $id,
                                     data => { id => $id } });
        }
        Collab::HTTP::idle(0.02);
        for my $wi (0 .. $#w) {
            for my $m ($w[$wi]->collect(0.002)) {
                next unless defined $m->{id} && $todo{ $m->{id} };
                if ($m->{type} eq 'ack') {
                    $acked{ $m->{id} } = { seq => $m->{seq}, doc => $todo{ $m->{id} }{doc} };
                    delete $todo{ $m->{id} };
                } elsif ($m->{type} eq 'nack') {
                    $next_try{ $m->{id} } = time + 0.2;
                }
            }
            if (!$w[$wi]->is_open) {
                $w[$wi] = session(instance => $wi % 2 ? 'b' : undef);
                delete $next_try{$_} for grep { $todo{$_}{w} == $wi } keys %todo;
            }
        }
        $pump_subs->();
        if (!$killed && keys %acked >= 15) {
            my $port = primary_port();
            my $name = defined $port ? node_of_port($port) : undef;
            next unless defined $name;
            $dead{$name} = $port;
            $t->kill_node($name, 'KILL');
            $killed = 1;
        }
    }
    is(scalar keys %todo, 0, "seed $seed: every delta acked in the end (failover included)")
        or diag "seed $seed: " . (scalar keys %todo) . " never acked";

    # the promoted replica holds every acked delta, once, at its acked seq
    my $port;
    wait_until('new primary', 30, sub {
        $port = primary_port();
        return $port && !(grep { $_ == $port } values %dead)
            && replicas_online($port) >= 1;
    }) or diag "seed $seed: no new primary; the sentinel says " . ($port // 'nothing');
    my ($seed_lost, $seed_dups, $seed_gaps) = (0, 0, 0);
    my %log;
    for my $doc (@docs) {
        my $entries = $t->redis_at($port, 'XRANGE', "collab:{$doc}:log", '-', '+');
        my ($n, %ids) = (0);
        for my $e (@$entries) {
            my %f = @{ $e->[1] };
            $n++;
            $seed_gaps++ if $f{seq} != $n;
            $seed_dups++ if $ids{ $f{id} }++;
            push @{ $log{$doc} }, "$f{seq}:$f{id}";
        }
    }
    for my $id (keys %acked) {
        my $a = $acked{$id};
        $seed_lost++ unless grep { $_ eq "$a->{seq}:$id" } @{ $log{ $a->{doc} } || [] };
    }
    $lost += $seed_lost;
    $dups += $seed_dups;
    $gaps += $seed_gaps;

    # every subscriber ends with exactly that log
    my $subs_ok = 0;
    for my $k (0 .. $#docs) {
        my $want = join ' ', @{ $log{ $docs[$k] } || [] };
        wait_until('subscriber', 15, sub {
            $pump_subs->();
            Collab::HTTP::idle(0.02);
            return join(' ', @{ $seen[$k] }) eq $want;
        });
        if (join(' ', @{ $seen[$k] }) eq $want) {
            $subs_ok++;
        } else {
            diag "seed $seed $docs[$k]: subscriber has " . join(' ', @{ $seen[$k] })
                . "\n  log has " . $want . "\n  events: " . join(' ', @{ $events[$k] || [] });
        }
    }
    $subs_bad += $DOCS - $subs_ok;
    diag "seed $seed: lost $seed_lost, duplicates $seed_dups, gaps $seed_gaps"
        if $seed_lost || $seed_dups || $seed_gaps;
    $_->close(1000) for @w, @subs;

    # the killed primary comes back as a replica of the new one
    my ($name) = keys %dead;
    next unless defined $name;
    my $old = delete $dead{$name};
    $t->redis_node($name, port => $old, args => ['--replicaof', '127.0.0.1', $port,
                                                  '--repl-diskless-sync-delay', '0']);
    wait_until('replicas', 40, sub { replicas_online($port) == 2 && settled($port) })
        or diag "seed $seed: the replicas of $port did not come back online";
    $seeds_done++;
}
is($seeds_done, $SEEDS, "$SEEDS failovers (kill -9 of the primary) under load");
is($lost, 0, 'no acked delta lost in any failover (ack=replicated)');
is($dups, 0, 'every retried delta stored once');
is($gaps, 0, 'seq dense in every log');
is($subs_bad, 0, 'every subscriber ends with exactly the log of the new primary');

$t->done;
done_testing;
