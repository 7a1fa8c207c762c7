#!/usr/bin/perl

# A member catching up from the log while deltas keep being published.
# Instance B reaches Redis through a proxy that delays the replies on its
# command connection (not on its subscriber connection), so every catch-up
# read returns after newer deltas were already announced by pub/sub and
# skipped by the fan-out.  Each re-read advances but does not reach the
# announced seq.  The member must go on reading until the log confirms that
# seq: going live below it (the old "not believed after 3 re-reads" rule)
# leaves the member short when the writers stop, with no gap ever seen.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;

my $t = Collab::Test->new(timeout => 120);
$t->start_redis;

my $proxy = $t->delay_proxy(to => $t->redis_port, down => 0.15,
                            fast => qr/SUBSCRIBE/);

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

(my $ca = $CONF) =~ s/%%REDIS%%/%%REDIS_PORT%%/;
(my $cb = $CONF) =~ s/%%REDIS%%/$proxy/;
$t->start_nginx(conf => $ca);
$t->start_nginx(name => 'b', conf => $cb);

my $DOCS = 12;

# the writers stop one after another, so that the last announced delta
# falls at a different point of a reader's re-read cycle for each document
my @last = map { 26 + 2 * $_ } 0 .. $DOCS - 1;
my $EACH = $last[-1];

# writers on A, direct to Redis; readers on B, behind the proxy
my @w = map { $t->ws_session } 1 .. $DOCS;
my @r = map { $t->ws_session(instance => 'b', timeout => 10) } 1 .. $DOCS;

my $step = sub {
    my ($i) = @_;
    for my $d (grep { $i <= $last[$_] } 0 .. $DOCS - 1) {
        $w[$d]->send_json({ type => 'delta', doc => "race$d", id => "d$i",
                            data => { n => $i } });
    }
    Collab::HTTP::idle(0.03);
};

# the log has a few entries when the readers join, then grows under them
$step->($_) for 1 .. 5;
$r[$_]->send_json({ type => 'subscribe', doc => "race$_" }) for 0 .. $DOCS - 1;
$step->($_) for 6 .. $EACH;

# every delta acked: the heads are known
my $acked = 0;
for my $d (0 .. $DOCS - 1) {
    my $n = 0;
    my $deadline = time + 20;
    while ($n < $last[$d] && time < $deadline) {
        my $m = $w[$d]->wait_for({ type => 'ack' }, $deadline - time) or last;
        $n++;
    }
    $acked++ if $n == $last[$d];
}
is($acked, $DOCS, "$DOCS writers: every delta acked");

my $complete = 0;
for my $d (0 .. $DOCS - 1) {
    my $r = $r[$d];
    my $s = $r->wait_for({ type => 'subscribed' }, 10);
    my $at = $s && $s->{state} ? $s->{state}{seq} : 0;
    my $ok = $s ? 1 : 0;
    while ($ok && $at < $last[$d]) {
        my $m = $r->wait_for({ type => 'delta' }, 10) or do {
            diag "race$d: no delta after $at within 10 s";
            $ok = 0;
            last;
        };
        if ($m->{seq} != $at + 1) {
            diag "race$d: delta $m->{seq} after $at";
            $ok = 0;
            last;
        }
        $at = $m->{seq};
    }
    $complete++ if $ok;
}
is($complete, $DOCS,
   'every member that joined while the log grew gets every delta, in order');

my @clamped = $t->grep_error_log(qr/not confirmed by the log/);
is(scalar @clamped, 0,
   'no member went live below a seq that the log had confirmed') or do {
    diag "  $_" for @clamped[0 .. ($#clamped < 4 ? $#clamped : 4)];
};

$_->close(1000) for @w, @r;

$t->done;
done_testing;
