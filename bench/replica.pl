#!/usr/bin/perl

# Replicas near the PoP (issue 12, `make bench-replica`): what a PoP whose
# primary is 40 ms away (a delaying proxy each way, t/lib's delay_proxy)
# gains from `collab_redis ... replica=` pointing at a replica on its own
# host.  Two PoP instances behind the same proxy, one with replica= and one
# without; a third instance talks to the primary directly and writes.
#
#   join      connect + subscribe to a document of 200 deltas, until the
#             replay is complete (subscribed + the 200 deltas)
#   resume    connect + subscribe with since/epoch 20 behind the head, until
#             caught up
#   delivery  a delta written on the direct instance, until a subscriber at
#             the PoP has it
#
# Medians and p90 of a bounded number of samples.  Writes
# bench/replica-notes.md (included by bench/report.pl into
# docs/benchmarks.md) and replaces that section of docs/benchmarks.md.
# BENCH_QUICK=1: fewer samples.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use Time::HiRes qw(time);
use Test::More;
use Collab::Test;

my $ROOT = "$FindBin::Bin/..";
my $QUICK = $ENV{BENCH_QUICK} ? 1 : 0;
my $N = $QUICK ? 8 : 30;          # joins and resumes per setup
my $ND = $QUICK ? 30 : 100;       # deliveries per setup
my $DELAY = 0.04;

my $t = Collab::Test->new(timeout => 600);
$t->start_redis;
my $P = $t->redis_port;
my $R = $t->redis_node('r', args => ['--replicaof', '127.0.0.1', $P]);
my $proxy = $t->delay_proxy(to => $P, up => $DELAY, down => $DELAY);

my $CONF = <<'EOF';
    collab_redis 127.0.0.1:%%REDIS%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_rate off;
        }
    }
EOF
(my $plain = $CONF) =~ s/%%REDIS%%/$proxy/;
(my $rep = $CONF) =~ s/%%REDIS%%/$proxy replica=127.0.0.1:$R/;
(my $direct = $CONF) =~ s/%%REDIS%%/$P/;
$t->start_nginx(conf => $plain, workers => 2);
$t->start_nginx(name => 'rep', conf => $rep, workers => 2);
$t->start_nginx(name => 'b', conf => $direct, workers => 2);

ok(Collab::Test::wait_until(sub {
    scalar($t->grep_error_log(qr/is used for reads/)) >= 2 }, 60),
   'the replica is used by both workers of the PoP with replica=');

# the documents: 200 deltas each, written directly
my $w = $t->ws_session(instance => 'b');
my $head = 200;
my @docs = map { "bj$_" } 1 .. 2 * $N;
for my $d (@docs, 'bd') {
    $w->send_json({ type => 'delta', doc => $d, id => "i$_", data => { n => $_ } })
        for 1 .. $head;
    for (1 .. $head) { $w->wait_for({ type => 'ack' }, 30) or die "no ack\n" }
}
ok(Collab::Test::wait_until(sub {
    ($t->redis_at($R, 'XLEN', "collab:{bd}:log") // 0) == $head }, 30),
   'the replica has the documents');
my $epoch = $t->redis('HGET', 'collab:{bd}:state', 'epoch');

# ms from connect to the last of $want deltas
sub join_ms {
    my ($inst, $doc, %o) = @_;
    my $t0 = time;
    my $ws = $t->ws_session(instance => $inst);
    $ws->send_json({ type => 'subscribe', doc => $doc, %o });
    my $want = defined $o{since} ? $head - $o{since} : $head;
    my $n = 0;
    while ($n < $want) {
        my $m = $ws->wait_for(sub { $_[0]{type} =~ /^(delta|error)$/ }, 20)
            or die "join $doc on $inst: timed out\n";
        die "join $doc: $m->{code}\n" if $m->{type} eq 'error';
        $n++;
    }
    my $ms = (time - $t0) * 1000;
    $ws->close(1000);
    return $ms;
}

# ms from the write on the direct instance to the PoP's subscriber
sub delivery_ms {
    my ($inst) = @_;
    my $s = $t->ws_session(instance => $inst);
    $t->subscribe($s, 'bd', since => $head, epoch => $epoch);
    my @ms;
    for my $i (1 .. $ND) {
        my $t0 = time;
        $w->send_json({ type => 'delta', doc => 'bd', id => "x$inst$i", data => $i });
        $s->wait_for({ type => 'delta', id => "x$inst$i" }, 10) or die "no delivery\n";
        push @ms, (time - $t0) * 1000;
        $w->wait_for({ type => 'ack' }, 10);
        $head++;
        $t->idle(0.02);
    }
    $s->close(1000);
    return @ms;
}

my %res;
my @half = ([ @docs[0 .. $N - 1] ], [ @docs[$N .. $#docs] ]);
for my $setup (['main', 'primary 40 ms away', 0], ['rep', 'replica= on the PoP', 1]) {
    my ($inst, $name, $k) = @$setup;
    # each setup joins documents that it never joined before
    $res{$name}{join} = [ map { join_ms($inst, $_) } @{ $half[$k] } ];
    my $since = 200 - 20;
    $res{$name}{resume} = [ map {
        join_ms($inst, $_, since => $since,
                epoch => $t->redis('HGET', "collab:{$_}:state", 'epoch'))
    } @{ $half[$k] } ];
}
for my $setup (['main', 'primary 40 ms away'], ['rep', 'replica= on the PoP']) {
    $res{ $setup->[1] }{delivery} = [ delivery_ms($setup->[0]) ];
}
$head = 200;

my $fcall_ro = ($t->redis_at($R, 'INFO', 'commandstats') =~ /cmdstat_fcall_ro:calls=(\d+)/)[0];
cmp_ok($fcall_ro // 0, '>=', 2 * $N, 'the replica served the reads of its PoP');

$t->done;
done_testing;

sub pct {
    my ($p, @v) = @_;
    @v = sort { $a <=> $b } @v;
    return $v[ int(($#v) * $p + 0.5) ];
}

my $cpu = `awk -F': ' '/model name/ {print \$2; exit}' /proc/cpuinfo`;
chomp $cpu;
my $ncpu = `nproc`;
chomp $ncpu;
my $date = `date -u +%Y-%m-%d`;
chomp $date;
my $ver = `redis-server --version`;
$ver = $ver =~ /v=(\S+)/ ? $1 : '?';

my $md = "## Replicas near the PoP (issue 12)\n\n"
    . "`make bench-replica` (`perl bench/replica.pl`), $date, $ncpu × $cpu, Redis $ver, 2 "
    . "workers per nginx. A PoP nginx reaches the primary through a proxy that delays each "
    . "direction by " . ($DELAY * 1000) . " ms (`delay_proxy` of the test harness: `tc netem` "
    . "is not available here); the replica (`--replicaof` the primary, directly) is on the "
    . "PoP's host. Two PoP instances behind the same proxy, one with `replica=`, one without; "
    . "a third instance writes directly to the primary.\n\n"
    . "- **join**: connect and subscribe to a document of 200 deltas until the replay is "
    . "complete ($N samples, each on a document that instance had not followed);\n"
    . "- **resume**: connect and subscribe with `since`/`epoch` 20 deltas behind the head "
    . "until caught up ($N samples);\n"
    . "- **delivery**: a delta written on the direct instance until the PoP's subscriber has "
    . "it ($ND samples, paced).\n\n"
    . "| | primary 40 ms away: median | p90 | with `replica=`: median | p90 |\n"
    . "|---|---|---|---|---|\n";
for my $k (qw(join resume delivery)) {
    my $a = $res{'primary 40 ms away'}{$k};
    my $b = $res{'replica= on the PoP'}{$k};
    $md .= sprintf("| %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms |\n", $k,
                   pct(0.5, @$a), pct(0.9, @$a), pct(0.5, @$b), pct(0.9, @$b));
}
$md .= "\nWithout the replica a join pays the `SUBSCRIBE` of the document's channel and the "
    . "log read, each a round trip to the primary (80 ms here); with it both are local. A "
    . "delivery reaches the PoP through replication (primary to replica, then the replica's "
    . "channel) instead of through the proxy. What the replica does not serve (a new "
    . "document, a denial, a replica behind the announced seq) still costs the round trip "
    . "([redis.md](redis.md#replicas-near-the-pop)).\n\n";

open my $fh, '>', "$FindBin::Bin/replica-notes.md" or die;
print $fh $md;
close $fh;

my $doc = $ENV{BENCH_DOC} // "$ROOT/docs/benchmarks.md";
if (-f $doc) {
    open my $in, '<', $doc or die;
    local $/;
    my $text = <$in>;
    close $in;
    if ($text !~ s/^## Replicas near the PoP \(issue 12\)\n.*?(?=^## |\z)/$md/ms) {
        $text =~ s/\n*\z/\n\n$md/;
    }
    $text =~ s/\n+\z/\n/;
    open my $o, '>', $doc or die;
    print $o $text;
    close $o;
    print STDERR "wrote bench/replica-notes.md and its section of $doc\n";
}
