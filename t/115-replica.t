#!/usr/bin/perl

# replica=: a Redis replica near the PoP serves reads.  Nginx A (the PoP)
# reaches the primary through a proxy that delays 40 ms each way and names
# a replica (--replicaof the primary) for its reads; nginx B talks to the
# primary directly.  Writers on A and B, subscribers on A: every subscriber
# gets every delta once, in seq order, and the logs are dense; a resume
# gets exactly what was missed; a new document and a refused subscribe are
# decided by the primary (the denial is audited there).  The replica is
# really used (FCALL_RO and the channels on it).  Killing the replica
# (SIGKILL) or stopping it (SIGSTOP: it lags) mid-run falls back to the
# primary without a gap, and it is used again once it is back.  With
# sentinel:NAME the primary's fence travels to the replica with the state.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use POSIX ();
use Collab::Test;

my $t = Collab::Test->new(timeout => 150);

# --- configuration
{
    my $base = <<'EOF';
    collab_redis 127.0.0.1:6379 replica=127.0.0.1:6380 replica_lag=300ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab { collab; }
    }
EOF
    my ($rc, $out) = $t->check_nginx_conf($base);
    is($rc, 0, 'nginx -t accepts replica= replica_lag=') or diag $out;
    my $sentinel = 'collab_redis sentinel:m sentinels=127.0.0.1:26379 replica=127.0.0.1:6380;';
    (my $s = $base) =~ s/collab_redis .*?;/$sentinel/s;
    ($rc, $out) = $t->check_nginx_conf($s);
    is($rc, 0, 'nginx -t accepts replica= with sentinel:') or diag $out;
    for my $bad (
        ['collab_redis cluster:127.0.0.1:7000 replica=127.0.0.1:6380;',
         '"replica=" is not supported with a Redis Cluster', 'with a cluster'],
        ['collab_redis 127.0.0.1 replica=unix:/tmp/r.sock;', 'not a unix socket',
         'a unix socket'],
        ['collab_redis 127.0.0.1 replica=nohost.invalid:6380;',
         'invalid replica address "nohost.invalid:6380"', 'a name that does not resolve'],
        ['collab_redis 127.0.0.1 replica=;', 'invalid replica address ""', 'an empty address'],
        ['collab_redis 127.0.0.1 replica=127.0.0.1:6380 replica=127.0.0.1:6381;',
         'duplicate "replica="', 'two replicas'],
        ['collab_redis 127.0.0.1 replica_lag=1s;', '"replica_lag=" needs "replica="',
         'replica_lag= alone'],
        ['collab_redis 127.0.0.1 replica=127.0.0.1:6380 replica_lag=0;',
         'invalid parameter "replica_lag=0": a time from 10ms to 60s', 'a zero lag'],
        ['collab_redis 127.0.0.1 replica=127.0.0.1:6380 replica_lag=2m;',
         'invalid parameter "replica_lag=2m": a time from 10ms to 60s', 'a lag over 60 s'],
        ['collab_redis 127.0.0.1 replica=127.0.0.1:6380 replica_lag=1s replica_lag=2s;',
         'duplicate "replica_lag="', 'two lags'],
        ['collab_redis 127.0.0.1:6380 replica=127.0.0.1:6380;', 'is the primary itself',
         'the primary as its own replica'],
    ) {
        (my $c = $base) =~ s/collab_redis .*?;/$bad->[0]/s;
        ($rc, $out) = $t->check_nginx_conf($c);
        ok($rc != 0 && index($out, $bad->[1]) >= 0, "refused: $bad->[2]") or diag $out;
    }
}

# --- the topology
$t->start_redis;
my $P = $t->redis_port;
my $R;
sub start_replica {
    $R = $t->redis_node('r', port => $R, args => ['--replicaof', '127.0.0.1', $P,
                                                   '--repl-diskless-sync-delay', '0']);
}
start_replica();
my $proxy = $t->delay_proxy(to => $P, up => 0.04, down => 0.04);

sub replica_synced {
    my ($info) = $t->redis_at_try($R, 'INFO', 'replication');
    return defined $info && $info =~ /master_link_status:up/;
}
ok(wait_until(\&replica_synced, 20), 'the replica follows the primary');

my $CONF = <<'EOF';
    collab_redis 127.0.0.1:%%REDIS%% %%REPLICA%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_rate off;
            collab_user $arg_user;
            collab_doc $arg_doc;
            collab_default_role editor;
        }
        location = /metrics { collab_metrics; }
    }
EOF
(my $ca = $CONF) =~ s/%%REDIS%%/$proxy/;
$ca =~ s/%%REPLICA%%/replica=127.0.0.1:$R replica_lag=2s/;
(my $cb = $CONF) =~ s/%%REDIS%%/$P/;
$cb =~ s/%%REPLICA%%//;
$t->start_nginx(conf => $ca, workers => 2);
$t->start_nginx(name => 'b', conf => $cb, workers => 2);


# every worker of an instance logged $re at least $n times (its own pid)
sub each_worker {
    my ($inst, $re, $n) = @_;
    my @pids = $t->worker_pids($inst);
    my @lines = grep { $_ =~ $re } split /\n/, $t->error_log($inst);
    for my $pid (@pids) {
        return 0 if (grep { / $pid#\d+: / } @lines) < $n;
    }
    return scalar @pids;
}
my $USED = qr/the replica "[^"]+" is used for reads/;
my $UNUSED = qr/the replica "[^"]+" is no longer used/;

# exact counts of one function's calls: the slow log keeps every command
# (the replica's checks run FCALL_RO collab_version every second)
sub slowlog_on {
    my ($port) = @_;
    $t->redis_at($port, 'CONFIG', 'SET', 'slowlog-log-slower-than', '0');
    $t->redis_at($port, 'CONFIG', 'SET', 'slowlog-max-len', '100000');
    $t->redis_at($port, 'SLOWLOG', 'RESET');
}
sub calls_of {
    my ($port, $fn) = @_;
    my $log = $t->redis_at($port, 'SLOWLOG', 'GET', '-1');
    return scalar grep { ref $_->[3] && ($_->[3][1] // '') eq $fn } @$log;
}

ok(wait_until(sub { each_worker('main', $USED, 1) == 2 }, 30),
   'both workers of A use the replica') or diag $t->error_log;
ok(wait_until(sub { replica_gauge() == 2 }, 10), 'collab_redis_replica_usable 2');

# --- writers on A and B, subscribers on A
my @DOCS = map { "rp$_" } 1 .. 3;
my (%writer, @subs);

sub session {
    my ($inst, $user) = @_;
    my $ws;
    wait_until(sub { $ws = eval { $t->ws_session(instance => $inst, timeout => 10,
                                                 path => "/collab?user=$user") } }, 20);
    return $ws;
}

for my $d (@DOCS) {
    $writer{$d} = [ session('main', 'wa'), session('b', 'wb') ];
    for my $i (1 .. 2) {
        my $ws = session('main', "s$i");
        my $s = $t->subscribe($ws, $d);
        push @subs, { ws => $ws, doc => $d, pos => 0, ids => {}, bad => [] };
        is($s && $s->{type}, 'subscribed', "subscriber $i of $d on A")
            or diag explain $s;
    }
}

my $round = 0;

# every writer sends $n deltas, a little at a time; $during runs midway
sub write_round {
    my ($n, $during) = @_;
    $round++;
    for my $k (1 .. $n) {
        for my $d (@DOCS) {
            my $w = $writer{$d};
            $w->[$_]->send_json({ type => 'delta', doc => $d,
                                  id => "r$round-$_-$k", data => { k => $k } }) for 0, 1;
        }
        $t->idle(0.02);
        $during->() if $during && $k == int($n / 2);
    }
    my $acked = 0;
    for my $d (@DOCS) {
        for my $w (@{ $writer{$d} }) {
            for my $k (1 .. $n) {
                my $m = $w->wait_for(sub { $_[0]{type} =~ /^n?ack$/ }, 20) or last;
                $acked++ if $m->{type} eq 'ack';
            }
        }
    }
    return $acked;
}

# reads a subscriber on to $head: every seq once and in order
sub follow {
    my ($s, $head) = @_;
    my $deadline = time + 20;
    while ($s->{pos} < $head && time < $deadline) {
        my $m = $s->{ws}->wait_for(sub {
            my $m = shift;
            ($m->{doc} // '') eq $s->{doc}
                && $m->{type} =~ /^(delta|resync|error|unsubscribed)$/
        }, $deadline - time) or last;
        if ($m->{type} ne 'delta') {
            push @{ $s->{bad} }, "$m->{type} " . Collab::Test::json_encode($m);
            last;
        }
        if ($m->{seq} != $s->{pos} + 1) {
            push @{ $s->{bad} }, "seq $m->{seq} after $s->{pos}";
            $s->{pos} = $m->{seq} if $m->{seq} > $s->{pos};
            next;
        }
        $s->{pos} = $m->{seq};
        $s->{ids}{ $m->{seq} } = $m->{id};
    }
    return $s->{pos} == $head && !@{ $s->{bad} };
}

# the log is dense and every subscriber has exactly it
sub check_all {
    my ($what) = @_;
    my ($dense, $same) = (0, 0);
    for my $d (@DOCS) {
        my @log = $t->log_entries($d);
        my $ok = 1;
        for my $i (0 .. $#log) { $ok = 0 unless $log[$i]{seq} == $i + 1 }
        $dense++ if $ok;
        for my $s (grep { $_->{doc} eq $d } @subs) {
            my $good = follow($s, scalar @log);
            for my $e (@log) {
                $good = 0 unless ($s->{ids}{ $e->{seq} } // '') eq $e->{id};
            }
            $same++ if $good;
            diag "$d: $_" for @{ $s->{bad} };
            @{ $s->{bad} } = ();
        }
    }
    is($dense, scalar @DOCS, "$what: dense logs");
    is($same, scalar @subs, "$what: every subscriber has exactly the log");
}

is(write_round(15), 15 * 2 * @DOCS, 'writers on A and B: every delta acked');
check_all('steady');

# --- the replica is really used
{
    slowlog_on($_) for $P, $R;
    my $reads = 0;
    for my $d (@DOCS) {
        for my $since (0, 5, 10) {
            my $r = $t->http(path => "/collab?doc=$d&view=deltas&since=$since&user=g");
            $reads++ if $r->{status} == 200 && @{ $r->{json}{deltas} || [] };
        }
        my $ws = session('main', 'j');
        my $s = $t->subscribe($ws, $d, since => 0);
        $reads++ if $s && $s->{type} eq 'subscribed';
        $ws->close(1000);
    }
    is($reads, 4 * @DOCS, 'HTTP reads and joins on A answered');
    my ($pr, $rr) = (calls_of($P, 'collab_read'), calls_of($R, 'collab_read_ro'));
    cmp_ok($rr, '>=', $reads, 'the reads ran on the replica (collab_read_ro)');
    cmp_ok($pr, '<', $reads / 2, 'the primary ran fewer reads (collab_read)')
        or diag "primary collab_read $pr, replica collab_read_ro $rr";
    my $sub_r = $t->redis_at($R, 'PUBSUB', 'NUMSUB', "collab:{$DOCS[0]}")->[1];
    my $sub_p = $t->redis_at($P, 'PUBSUB', 'NUMSUB', "collab:{$DOCS[0]}")->[1];
    ok($sub_r >= 1 && $sub_p == 0, 'A follows the channels on the replica')
        or diag "replica $sub_r, primary $sub_p";
}


# --- a resume after a drop gets exactly what was missed
{
    my $s = $subs[0];
    my $epoch;
    my $ws0 = session('main', 'e');
    my $sub = $t->subscribe($ws0, $s->{doc});
    $epoch = $sub->{epoch};
    $ws0->close(1000);
    $s->{ws}->drop;
    my $from = $s->{pos};
    is(write_round(5), 5 * 2 * @DOCS, 'writes while a subscriber is away');
    $s->{ws} = session('main', 's1');
    $sub = $t->subscribe($s->{ws}, $s->{doc}, since => $from, epoch => $epoch);
    is($sub && $sub->{type}, 'subscribed', 'resumed with since and epoch');
    check_all('resume');
}

# --- a new document (no state yet), and a refused subscribe
{
    my $ws = session('main', 'n');
    my $s = $t->subscribe($ws, 'rp-new');
    ok($s && $s->{type} eq 'subscribed' && $s->{seq} == 0, 'a new document is created')
        or diag explain $s;
    $writer{'rp-new'}[0] = session('b', 'wb');
    $writer{'rp-new'}[0]->send_json({ type => 'delta', doc => 'rp-new', id => 'n1',
                                      data => 1 });
    my $m = $ws->wait_for({ type => 'delta' }, 10);
    ok($m && $m->{seq} == 1, 'and its first delta is delivered');

    $t->redis('SET', 'collab:{rp-acl}:acl',
              '{"version":1,"default":"none","users":{"own":"owner"}}');
    my $o = session('main', 'own');
    $s = $t->subscribe($o, 'rp-acl');
    is($s && $s->{type}, 'subscribed', 'the owner subscribes');
    ok(wait_until(sub { ($t->redis_at($R, 'EXISTS', 'collab:{rp-acl}:state')) == 1 }, 10),
       'the state hash reached the replica');
    my $v = session('main', 'mallory');
    $s = $t->subscribe($v, 'rp-acl');
    is($s && $s->{code}, 'forbidden', 'a user without a role is refused');
    my $audit = $t->redis('XRANGE', 'collab:{rp-acl}:audit', '-', '+');
    ok((grep { my %h = @{ $_->[1] }; ($h{user} // '') eq 'mallory' } @$audit),
       'the denial is audited on the primary');
    $_->close(1000) for $ws, $o, $v;
}

# --- the replica killed mid-run: the primary serves, nothing is lost
{
    is(write_round(20, sub { $t->kill_node('r', 'KILL') }), 20 * 2 * @DOCS,
       'replica killed mid-run: every delta acked');
    ok(wait_until(sub { each_worker('main', $UNUSED, 1) == 2 }, 20),
       'both workers stopped using the replica');
    check_all('replica killed');
    is(write_round(5), 5 * 2 * @DOCS, 'writes without the replica');
    check_all('without the replica');

    # the channels move back while deltas flow and members catch up
    start_replica();
    my ($n, $acked, $until) = (0, 0, time + 40);
    until (each_worker('main', $USED, 2) == 2 || time > $until) {
        $acked += write_round(2);
        $n++;
    }
    is($acked, $n * 2 * 2 * @DOCS, "writes while the replica comes back ($n rounds)");
    ok(each_worker('main', $USED, 2) == 2, 'the replica is used again by both workers');
    check_all('replica back, writes meanwhile');
    slowlog_on($R);
    is(write_round(10), 10 * 2 * @DOCS, 'writes with the replica back');
    check_all('replica back');
    my $ws = session('main', 'j');
    $t->subscribe($ws, $DOCS[0], since => 0);
    $ws->close(1000);
    cmp_ok(calls_of($R, 'collab_read_ro'), '>=', 1, 'reads on the replica again');
}

# --- the replica stops (lags) with reads in flight on it: the clients that
# leave have their reads cut, the others are answered by the primary
{
    my (@ws, @http, @gone, @stay);
    for my $i (0 .. 5) {
        push @ws, session('main', "x$i");
        push @http, Collab::HTTP::connect_socket(port => $t->port, timeout => 2, tls => 0);
    }
    my $inflight0 = inflight();
    $t->kill_node('r', 'STOP');
    for my $i (0 .. 5) {
        my $ws = $ws[$i];
        $ws->send_json({ type => 'subscribe', doc => $DOCS[$i % @DOCS], since => 0 });
        push @{ $i % 2 ? \@gone : \@stay }, $ws;
        my $h = $http[$i];
        Collab::HTTP::write_all($h, "GET /collab?doc=$DOCS[0]&view=deltas&since=0&user=h "
                                    . "HTTP/1.1\r\nHost: x\r\n\r\n", 2) if $h;
        push @gone, $h;
    }
    # the reads are in flight on the stopped replica (nginx's own count)
    ok(wait_until(sub { inflight() >= $inflight0 + 6 }, 10),
       'reads in flight on the stopped replica') or diag 'inflight ' . inflight();
    for my $c (@gone) { ref $c eq 'Collab::WS' ? $c->drop : close $c }
    my $answered = 0;
    for my $i (0 .. $#stay) {
        my $s = $stay[$i]->wait_for(sub { $_[0]{type} =~ /^(subscribed|error)$/ }, 15);
        $answered++ if $s && $s->{type} eq 'subscribed';
        push @subs, { ws => $stay[$i], doc => $DOCS[(2 * $i) % @DOCS], pos => 0,
                      ids => {}, bad => [] };
    }
    is($answered, scalar @stay, 'joins sent to the stopped replica are answered');
    is(write_round(20), 20 * 2 * @DOCS, 'replica stopped: every delta acked');
    ok(wait_until(sub { each_worker('main', $UNUSED, 2) == 2 }, 20),
       'a lagging replica is no longer used');
    check_all('replica lagging');
    my $cont = int time;
    $t->kill_node('r', 'CONT');
    ok(wait_until(sub { each_worker('main', $USED, 3) == 2 }, 40),
       'used again once it follows');
    # the third time it is left: 12 good probes (3, doubled per change)
    my ($last) = reverse grep { $_ =~ $USED } split /\n/, $t->error_log('main');
    my ($y, $mo, $d, $h, $mi, $se) = $last =~ m{^(\d+)/(\d+)/(\d+) (\d+):(\d+):(\d+)};
    my $used_at = POSIX::mktime($se, $mi, $h, $d, $mo - 1, $y - 1900);
    cmp_ok($used_at - $cont, '>=', 10, 'a replica that flaps is trusted later (>= 12 probes)')
        or diag $last;
    is(write_round(10), 10 * 2 * @DOCS, 'writes after the lag');
    check_all('after the lag');
}

# --- with Sentinel: the primary's fence reaches the replica with the state
{
    my $sp = $t->redis_node('s1', sentinel => 1,
                            conf => ["sentinel monitor m 127.0.0.1 $P 1"]);
    (my $cs = $CONF) =~ s/127.0.0.1:%%REDIS%%/sentinel:m sentinels=127.0.0.1:$sp/;
    $cs =~ s/%%REPLICA%%/replica=127.0.0.1:$R replica_lag=1s/;
    $t->start_nginx(name => 'c', conf => $cs, workers => 1);
    ok(wait_until(sub { each_worker('c', $USED, 1) == 1 }, 30),
       'sentinel: the replica is used');
    my $w = session('c', 'wc');
    my $r = session('c', 'rc');
    my $s = $t->subscribe($r, 'sn1');
    $w->send_json({ type => 'delta', doc => 'sn1', id => "s$_", data => $_ }) for 1 .. 10;
    my @seq = map { my $m = $r->wait_for({ type => 'delta' }, 10); $m ? $m->{seq} : 0 } 1 .. 10;
    is("@seq", "@{[1 .. 10]}", 'sentinel: deltas delivered in order');
    my $fence = ($t->redis('INFO', 'replication') =~ /master_replid:(\w+)/)[0];
    ok(wait_until(sub {
        ($t->redis_at($R, 'HGET', 'collab:{sn1}:state', 'fence') // '') eq $fence }, 10),
       'the fenced state reached the replica');
    slowlog_on($R);
    my $r2 = session('c', 'rc');
    $s = $t->subscribe($r2, 'sn1', since => 5, epoch => $s->{epoch});
    @seq = map { my $m = $r2->wait_for({ type => 'delta' }, 10); $m ? $m->{seq} : 0 } 1 .. 5;
    is("@seq", "6 7 8 9 10", 'sentinel: a resume gets what it missed');
    cmp_ok(calls_of($R, 'collab_read_ro'), '>=', 1, 'sentinel: ... read on the replica');
    $_->close(1000) for $w, $r, $r2;
}

my @clamped = $t->grep_error_log(qr/not confirmed by the log/);
is(scalar @clamped, 0, 'no member went live below an announced seq');

$_->{ws}->close(1000) for @subs;
$t->done;
done_testing;

sub wait_until { Collab::Test::wait_until(@_) }

sub replica_gauge {
    my $r = $t->http(path => '/metrics');
    return $r->{status} == 200 && $r->{body} =~ /^collab_redis_replica_usable (\d+)/m ? $1 : -1;
}

# collab_redis_inflight of A: commands of its workers waiting for a reply
sub inflight {
    my $r = $t->http(path => '/metrics');
    return $r->{status} == 200 && $r->{body} =~ /^collab_redis_inflight (\d+)/m ? $1 : -1;
}
