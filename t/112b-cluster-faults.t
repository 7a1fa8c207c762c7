#!/usr/bin/perl

# Redis Cluster faults (3 primaries + 3 replicas, one worker):
# - the seed the worker asks for the slot map stops answering (SIGSTOP)
#   while a primary fails over: the map connection times out and goes to
#   the next seed, so the worker learns the new primary;
# - a slot stuck half-migrated (TRYAGAIN past the resend bound): the write
#   is refused as "unavailable" (the client retries), never "internal";
# - a primary cut off from the cluster but not from nginx (it forgets the
#   other nodes) while its replica takes over: the channel its members
#   follow moves to the new primary with the map, so they get the deltas
#   acked there (after a resync "epoch": the new primary fences the
#   document with a new epoch).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;

my $t = Collab::Test->new(timeout => 150);

my @nodes = $t->redis_cluster(primaries => 3, replicas => 1, node_timeout => 2000);
my %port = map { $_ => $t->node_port($_) } @nodes;
my %by_port = reverse %port;

# CLUSTER NODES: who is a primary, whose replica is who (once gossiped)
my (%primary_of, @primaries);
Collab::Test::wait_until(sub {
    my (%id, @lines);
    (%primary_of, @primaries) = ();
    for my $n (@nodes) {
        %id = ();
        @lines = split /\r?\n/, $t->redis_at($port{$n}, 'CLUSTER', 'NODES');
        for my $line (@lines) {
            my ($nid, $addr) = split / /, $line;
            my ($p) = $addr =~ /:(\d+)/;
            $id{$nid} = $by_port{$p};
        }
        for my $line (@lines) {
            my ($nid, $addr, $flags, $master) = split / /, $line;
            if ($master eq '-') {
                push @primaries, $id{$nid};
            } else {
                $primary_of{ $id{$nid} } = $id{$master};
            }
        }
        return 0 unless @primaries == 3 && keys %primary_of == 3;
        (%primary_of, @primaries) = () unless $n eq $nodes[-1];
    }
    return 1;
}, 30);
is(scalar @primaries, 3, '3 primaries, each with a replica');

# the owner of a slot, asked of one node
sub owner_at {
    my ($node, $slot) = @_;
    my ($r) = $t->redis_at_try($port{$node}, 'CLUSTER', 'SLOTS');
    return undef unless ref $r;
    for my $range (@$r) {
        return $by_port{ $range->[2][1] }
            if $slot >= $range->[0] && $slot <= $range->[1];
    }
    return undef;
}

my %slot_cache;
sub slot_of {
    $slot_cache{ $_[0] } //= $t->redis_at($port{ $primaries[1] }, 'CLUSTER', 'KEYSLOT',
                                          "collab:{$_[0]}:log");
}

# a document on each primary
my %doc_on;
for my $i (1 .. 200) {
    my $o = owner_at($primaries[0], slot_of("fd$i"));
    $doc_on{$o} //= "fd$i";
    last if keys %doc_on == 3;
}

# the victim; the map seed is the replica of another primary (no vote)
my $victim = $primaries[0];
my ($seed) = grep { $primary_of{$_} && $primary_of{$_} ne $victim } sort keys %primary_of;
my $live = (grep { $_ ne $victim } @primaries)[0];
my $third = (grep { $_ ne $victim && $_ ne $live } @primaries)[0];
# after the stopped seed, the map comes from $live; $third is never a seed
my @seeds = ($seed, $live, grep { $_ ne $seed && $_ ne $live && $_ ne $third } @nodes);
my $SEEDS = join ',', map { "127.0.0.1:$port{$_}" } @seeds;

$t->write_nginx_conf(<<"EOF", workers => 1);
    collab_redis cluster:$SEEDS timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab { collab; collab_rate off; }
    }
EOF
$t->start_nginx;

my $ws;
Collab::Test::wait_until(sub { $ws = eval { $t->ws_session } }, 20);

# sends a delta until it is acked; the nack codes it got
sub write_until_acked {
    my ($doc, $id, $secs) = @_;
    my %codes;
    my $next = 0;
    my $acked = Collab::Test::wait_until(sub {
        if (time >= $next) {
            $ws->send_json({ type => 'delta', doc => $doc, id => $id, data => 1 });
            $next = time + 1e9;
        }
        for my $m ($ws->collect(0.02)) {
            next unless ($m->{id} // '') eq $id;
            return 1 if $m->{type} eq 'ack';
            if ($m->{type} eq 'nack') {
                $codes{ $m->{code} }++;
                $next = time + 0.3;
            }
        }
        return 0;
    }, $secs);
    return ($acked, \%codes);
}

my $vdoc = $doc_on{$victim};

# a member of a document (for a connection that must stay)
sub session_on {
    my $m;
    Collab::Test::wait_until(sub { $m = eval { $t->ws_session } }, 20);
    $t->subscribe($m, $_[0]);
    return $m;
}
ok((write_until_acked($vdoc, 'before', 20))[0], "a delta on $vdoc ($victim) acked");

# --- the map seed stops answering, then the victim dies
$t->kill_node($seed, 'STOP');
$t->idle(1.5);    # the next CLUSTER SLOTS is sent to the stopped seed
$t->kill_node($victim, 'KILL');

my $slot = slot_of($vdoc);
ok(Collab::Test::wait_until(sub {
    my $o = owner_at($live, $slot);
    return $o && $o ne $victim;
}, 40), "the replica of $victim is promoted");

my ($acked, $codes) = write_until_acked($vdoc, 'after', 20);
ok($acked, 'a delta on its document is acked on the new primary '
   . '(the worker left the stopped seed for the next one)')
    or diag explain $codes;
like($t->error_log, qr/the slot map timed out/, 'the map connection timed out');

$t->kill_node($seed, 'CONT');

# --- TRYAGAIN past the bound: "unavailable", not "internal"
{
    my $doc = $doc_on{$live};
    ok((write_until_acked($doc, 'mig-0', 20))[0], "a delta on $doc ($live) acked");
    my $s = slot_of($doc);
    my $dst = $third;
    my $dst_id = $t->redis_at($port{$dst}, 'CLUSTER', 'MYID');
    my $src_id = $t->redis_at($port{$live}, 'CLUSTER', 'MYID');
    $t->redis_at($port{$dst}, 'CLUSTER', 'SETSLOT', $s, 'IMPORTING', $src_id);
    $t->redis_at($port{$live}, 'CLUSTER', 'SETSLOT', $s, 'MIGRATING', $dst_id);
    # one key of the document moves, the others stay: TRYAGAIN
    $t->redis_at($port{$live}, 'MIGRATE', '127.0.0.1', $port{$dst}, "collab:{$doc}:log",
                 0, 5000);
    my $code;
    ok(Collab::Test::wait_until(sub {
        $ws->send_json({ type => 'delta', doc => $doc, id => 'mig-1', data => 1 })
            unless $code;
        for my $m ($ws->collect(0.05)) {
            $code = $m->{code} if ($m->{id} // '') eq 'mig-1' && $m->{type} eq 'nack';
            $code = 'acked' if ($m->{id} // '') eq 'mig-1' && $m->{type} eq 'ack';
        }
        return defined $code;
    }, 20), 'the write during a stuck migration is answered');
    is($code, 'unavailable', '... with nack unavailable (TRYAGAIN past the bound)');
    like($t->error_log, qr/TRYAGAIN, the command waits/, '... after waiting');
}

my $rep;

# --- a primary cut off from the cluster, not from nginx: its replica takes
# over; the channel followed on the old primary moves to the new one
{
    $t->redis_at($port{$live}, 'CLUSTER', 'SETSLOT', slot_of($doc_on{$live}), 'STABLE');
    $t->redis_at($port{$third}, 'CLUSTER', 'SETSLOT', slot_of($doc_on{$live}), 'STABLE');
    my $doc = $doc_on{$third};
    my $s = slot_of($doc);
    ($rep) = grep { $primary_of{$_} eq $third } keys %primary_of;
    my $sub;
    Collab::Test::wait_until(sub { $sub = eval { $t->ws_session } }, 20);
    is($t->subscribe($sub, $doc)->{type}, 'subscribed', "a member follows $doc ($third)");
    ok((write_until_acked($doc, 'cut-1', 20))[0], "a delta on $doc acked");
    my $epoch_cut1 = $t->redis_at($port{$third}, 'HGET', "collab:{$doc}:state", 'epoch');
    ok($sub->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'cut-1' }, 10),
       '... and delivered');
    $t->redis_at($port{$third}, 'WAIT', 1, 5000);

    # $third forgets every other node (for 60 s): it keeps its slots
    for my $line (split /\r?\n/, $t->redis_at($port{$third}, 'CLUSTER', 'NODES')) {
        my ($nid, undef, $flags) = split / /, $line;
        next if $flags =~ /myself/;
        $t->redis_at_try($port{$third}, 'CLUSTER', 'FORGET', $nid);
    }
    $t->redis_at($port{$rep}, 'CLUSTER', 'FAILOVER', 'TAKEOVER');
    ok(Collab::Test::wait_until(sub { (owner_at($live, $s) // '') eq $rep }, 20),
       "$rep took over the slots of $third");
    is(owner_at($third, $s), $third, "... while $third still serves them");

    my ($acked, $codes) = write_until_acked($doc, 'cut-2', 20);
    ok($acked, "a delta on $doc acked on $rep") or diag explain $codes;
    # $rep was promoted from $third: the epoch fence gives the document a
    # new epoch, so the member may be told to start afresh (resync epoch)
    # before the delta reaches it; it subscribes again and reads it then
    my ($got, @resync);
    Collab::Test::wait_until(sub {
        for my $m ($sub->collect(0.05)) {
            next unless ($m->{doc} // '') eq $doc;
            $got = 1 if $m->{type} eq 'delta' && $m->{id} eq 'cut-2';
            if ($m->{type} eq 'resync') {
                push @resync, $m->{reason};
                $sub->send_json({ type => 'subscribe', doc => $doc });
            }
        }
        return $got;
    }, 15);
    ok($got, '... and delivered to the member (its channel followed the map)');
    is(join(' ', grep { $_ ne 'epoch' } @resync), '', '... after a resync "epoch" at most');
    my $epoch = $t->redis_at($port{$rep}, 'HGET', "collab:{$doc}:state", 'epoch');
    isnt($epoch, $epoch_cut1, "... the document has a new epoch on $rep (the fence)");
    like($t->error_log, qr/the map moved "collab:\{\Q$doc\E\}"/, '... as the log says');
    $sub->close(1000);
}

# --- SSUBSCRIBE answered MOVED (the map is stale: its seed is stopped):
# the channel goes to the slot's owner at once
{
    my $src = owner_at($rep, slot_of($vdoc));            # the promoted replica
    my $dst = $rep;
    my ($doc) = grep { !defined $slot_cache{$_} && (owner_at($rep, slot_of($_)) // '') eq $src }
        map { "mv$_" } 1 .. 300;
    my $s = slot_of($doc);
    my $stay = session_on($vdoc);
    my $log_before = $t->error_log;

    $t->kill_node($live, 'STOP');       # the map seed: no new map for a second or more
    my ($src_id, $dst_id) = map { $t->redis_at($port{$_}, 'CLUSTER', 'MYID') } $src, $dst;
    $t->redis_at($port{$dst}, 'CLUSTER', 'SETSLOT', $s, 'IMPORTING', $src_id);
    $t->redis_at($port{$src}, 'CLUSTER', 'SETSLOT', $s, 'MIGRATING', $dst_id);
    $t->redis_at($port{$dst}, 'CLUSTER', 'SETSLOT', $s, 'NODE', $dst_id);
    $t->redis_at($port{$src}, 'CLUSTER', 'SETSLOT', $s, 'NODE', $dst_id);
    my $m = eval { $t->ws_session };
    my $r = $m && $t->subscribe($m, $doc);
    $t->kill_node($live, 'CONT');
    is($r && $r->{type}, 'subscribed', "a member follows $doc, whose slot just left $src");
    ok((write_until_acked($doc, 'mv-1', 20))[0], "a delta on $doc acked");
    ok($m->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'mv-1' }, 15),
       '... and delivered');
    my $log = substr($t->error_log, length $log_before);
    like($log, qr/a sharded subscription was redirected/,
         'SSUBSCRIBE was answered MOVED: the slot goes to its owner at once');
    # hiredis 0.14 ends a subscribed connection on an error reply: once,
    # not again and again until the next map
    my $drops = () = $log =~ /subscriber connection to "[^"]+" lost: MOVED/g;
    ok($drops <= 1, "the subscriber connection to $src dropped once at most ($drops)");
    $_->close(1000) for $m, $stay;
}

$ws->close(1000);
$t->allow_log(qr/redis|cluster|slot|TRYAGAIN/i);
$t->done;
done_testing;
