#!/usr/bin/perl

# The Yjs workload of `make bench` (issue 13): stock y-websocket providers
# (t/yjs/scenario.mjs, one Node process) through two nginx instances on one
# Redis, collab_protocol y-websocket.
#
#   Y1  updates relayed: 4 writers set their key of a Y.Map at a paced total
#       rate, 16 readers see every change; delivered/s and the latency from
#       the set to each reader's event (p50, p99, max).
#   Y2  join time: a new provider of a room of N one-character updates
#       until `synced`, without and with compaction (collab_yjs_compact 1000,
#       collab_log_retention count=1000); the log length after the writes.
#
# Writes bench/yjs-notes.md (included by bench/report.pl into
# docs/benchmarks.md) and replaces that section of docs/benchmarks.md.
# BENCH_QUICK=1: 1 run, 3 s; BENCH_RUNS=N (default 3): medians of N runs.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use JSON::PP;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time);
use Test::More;
use Collab::Test;

my $ROOT = "$FindBin::Bin/..";
my $YJS = "$ROOT/t/yjs";
die "no t/yjs/node_modules: make t/yjs/node_modules\n" unless -d "$YJS/node_modules";

my $QUICK = $ENV{BENCH_QUICK} ? 1 : 0;
my $RUNS = $ENV{BENCH_RUNS} // ($QUICK ? 1 : 3);
my $SECS = $QUICK ? 3 : 5;
my $WORKERS = $ENV{BENCH_WORKERS} // 2;

my $t = Collab::Test->new(timeout => 3600);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => $WORKERS);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_auth variable;
        collab_user $arg_user;
        collab_default_role editor;
        collab_rate 100000r/s burst=100000;
        collab_max_message 1m;
        collab_send_queue 4m;
        location /yjs/ { collab; collab_protocol y-websocket; }
        location /yjsc/ {
            collab;
            collab_protocol y-websocket;
            collab_yjs_compact 1000;
            collab_log_retention count=1000;
        }
    }
EOF
$t->start_nginx;
$t->start_nginx(name => 'b');

my $u1 = 'ws://127.0.0.1:' . $t->port;
my $u2 = 'ws://127.0.0.1:' . $t->port('b');
my $n = 0;

sub scenario {
    my ($name, %args) = @_;
    my $out = $t->dir . "/node.out";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', $out or die;
        exec 'node', "$YJS/scenario.mjs", $name, encode_json({ %args, deadline => 120000 });
        die "node: $!";
    }
    my $rc;
    Collab::Test::wait_until(sub {
        my $r = waitpid($pid, WNOHANG);
        $rc = $? if $r == $pid;
        $r == $pid;
    }, 300);
    die "$name: node did not finish\n" unless defined $rc;
    die "$name: node exited with " . ($rc >> 8) . "\n" if $rc;
    open my $fh, '<', $out or die;
    local $/;
    return decode_json(<$fh>);
}

sub median {
    my @v = sort { $a <=> $b } @_;
    return $v[int($#v / 2)];
}

# Y1
my @y1;
for my $rate (200, 1000) {
    my @r = map {
        scenario('relay', url1 => "$u1/yjs", url2 => "$u2/yjs", room => 'y1-' . $n++,
                 writers => 4, readers => 16, rate => $rate, secs => $SECS)
    } 1 .. $RUNS;
    my %m = map { my $k = $_; $k => median(map { $_->{$k} } @r) }
            qw(sent_per_s delivered_per_s p50_ms p99_ms max_ms);
    push @y1, { rate => $rate, %m };
    printf STDERR "Y1 %d/s: delivered %.0f/s, p50 %.1f ms, p99 %.1f ms\n",
        $rate, $m{delivered_per_s}, $m{p50_ms}, $m{p99_ms};
}

# Y2
my @y2;
for my $size (1000, 10000) {
    for my $loc ('yjs', 'yjsc') {
        my (@join, @len);
        for (1 .. $RUNS) {
            my $room = 'y2-' . $n++;
            my $r = scenario('jointime', url1 => "$u1/$loc", room => $room, n => $size);
            push @join, $r->{join_ms};
            push @len, $t->log_len($room);
        }
        push @y2, { size => $size, loc => $loc, join_ms => median(@join), len => median(@len) };
        printf STDERR "Y2 %d %s: join %d ms, log %d\n", $size, $loc, median(@join), median(@len);
    }
}

$t->done;
done_testing;

# the section
my $cpu = `awk -F': ' '/model name/ {print \$2; exit}' /proc/cpuinfo`;
chomp $cpu;
my $ncpu = `nproc`;
chomp $ncpu;
my $date = `date -u +%Y-%m-%d`;
chomp $date;
my $md = "## Yjs (y-websocket, issue 13)\n\n"
    . "`perl bench/yjs.pl` (run by `make bench` and `make bench-yjs`), $date, $ncpu × $cpu, "
    . "$WORKERS workers per nginx, two nginx instances on one Redis, stock `y-websocket` 3.1 "
    . "providers with `yjs` 13.6 in one Node process (the clients' CPU counts), medians of "
    . "$RUNS run" . ($RUNS > 1 ? 's' : '') . ".\n\n"
    . "**Y1, updates relayed**: 4 writers (two per instance) set their key of a `Y.Map` at a "
    . "paced total rate for $SECS s; 16 readers (two sets of 8) receive every update. Latency: from the "
    . "writer's `set` to the reader's map event, through nginx, Redis and back.\n\n"
    . "| offered updates/s | delivered updates/s | p50 | p99 | max |\n|---|---|---|---|---|\n";
$md .= sprintf("| %s | %s | %.1f ms | %.1f ms | %.1f ms |\n", commas($_->{rate}),
               commas(sprintf('%.0f', $_->{delivered_per_s})), $_->{p50_ms}, $_->{p99_ms},
               $_->{max_ms})
    for @y1;
$md .= "\nThe one Node process runs all 20 providers and applies every update each reader "
    . "receives, so the tail latency at the higher rate includes its own queueing.\n";
$md .= "\n**Y2, join time of a large room**: one provider types N characters (one update "
    . "each), then a new provider connects; the time until it is `synced` with the whole "
    . "text, and the log's length. Compaction: `collab_yjs_compact 1000` with "
    . "`collab_log_retention count=1000` ([yjs.md](yjs.md#compaction)).\n\n"
    . "| updates | compaction | log entries | a new provider synced |\n|---|---|---|---|\n";
$md .= sprintf("| %s | %s | %s | %d ms |\n", commas($_->{size}),
               $_->{loc} eq 'yjsc' ? 'yes' : 'no', commas($_->{len}), $_->{join_ms})
    for @y2;
$md .= "\n";

sub commas { my $s = shift; 1 while $s =~ s/^(\d+)(\d{3})/$1,$2/; $s }

open my $fh, '>', "$FindBin::Bin/yjs-notes.md" or die;
print $fh $md;
close $fh;

# replace the section of docs/benchmarks.md (or put it where report.pl does)
my $doc = $ENV{BENCH_DOC} // "$ROOT/docs/benchmarks.md";
if (-f $doc) {
    open my $in, '<', $doc or die;
    local $/;
    my $text = <$in>;
    close $in;
    if ($text !~ s/^## Yjs \(y-websocket, issue 13\)\n.*?(?=^## |\z)/$md/ms) {
        $text =~ s/^(## Profile\n)/$md$1/m or $text .= "\n$md";
    }
    open my $o, '>', $doc or die;
    print $o $text;
    close $o;
    print STDERR "wrote bench/yjs-notes.md and its section of $doc\n";
}
