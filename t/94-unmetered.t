#!/usr/bin/perl

# Unmetered messages (issue 9, item 2): every message type costs something in
# the session's collab_rate budget, one log read per membership is in flight,
# a catch-up read asks for what fits the session's queue, and one session may
# use only a share of the worker's Redis pipeline.  worker_processes 1: the
# attackers and two well-behaved clients (a writer and a reader) share the
# worker and the document "big", whose log holds 2,000 deltas of 8 KB.
#
#   (a) 5,000 subscribes in one write: error rate_limited, then 4429
#   (b) 5,000 presence messages: dropped beyond the budget, then 4429
#   (c) 5,000 state messages: error rate_limited, then 4429
#   (d) 5,000 auth messages with a good token: error rate_limited, then 4429
#   (f) 5,000 subscribes in one write with collab_rate off: one log read in
#       flight, one `subscribed`, the log delivered once in order, and Redis
#       sends out less than twice the log's size (reads ask for what fits)
#   (e) pipeline share (max_inflight=16, session_inflight=4, Redis frozen):
#       the flooder's deltas beyond its share are nacked rate_limited, the
#       polite writer's delta is acked
#
# During each attack the polite writer's deltas are all acked and all reach
# the reader, in order; Redis's client output buffers (CLIENT LIST omem) stay
# under 8 MB (the send queue of 256 KB and a log entry per read in flight, at
# most a few reads), used_memory grows by less than 64 MB, and the worker's
# RSS grows by less than 64 MB.  Redis runs with a 64 MB cap on a normal
# client's output buffer: past it, Redis drops the worker's connection and
# every delta in flight is nacked unavailable.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::WS;

my $OMEM_MAX = 8 * 1024 * 1024;
my $USED_MAX = 64 * 1024 * 1024;
my $RSS_MAX = 64 * 1024;    # KB

my $t = Collab::Test->new(timeout => 300);
$t->start_redis(args => ['--client-output-buffer-limit', 'normal 64mb 64mb 0']);
$t->jwt_keys;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_ping 30s;
        collab_default_role editor;
        location = /collab {
            collab;
        }
        location = /fill {
            collab;
            collab_rate off;
        }
        location = /jwt {
            collab;
            collab_auth jwt;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
    }
EOF
$t->start_nginx;

$t->write_nginx_conf(<<'EOF', name => 'b');
    collab_redis 127.0.0.1:%%REDIS_PORT%% max_inflight=16 session_inflight=4 timeout=5s;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_ping 30s;
        collab_default_role editor;
        collab_rate off;
        location = /collab {
            collab;
        }
    }
EOF
$t->start_nginx(name => 'b');

my $DOC = 'big';
my ($worker) = $t->worker_pids;

###########################################################################
# the log: 2,000 deltas of 8 KB, through the module

{
    my $f = $t->ws_session(path => '/fill');
    my $data = 'x' x 8000;
    my $n = 0;
    while ($n < 2000) {
        my @ids = map { 'f' . ($n + $_) } 1 .. 50;
        $f->send_json({ type => 'delta', doc => $DOC, id => $_, data => $data }) for @ids;
        for my $id (@ids) {
            my $m = $f->wait_for(sub { ($_[0]{id} // '') eq $id }, 10);
            die "fill: no ack for $id\n" unless $m && $m->{type} eq 'ack';
        }
        $n += 50;
    }
    $f->close(1000);
}
is($t->log_len($DOC), 2000, 'the log holds 2,000 deltas');
my $EPOCH = $t->redis('HGET', "collab:{$DOC}:state", 'epoch');

sub redis_info {
    my ($field) = @_;
    my $info = $t->redis('INFO', 'memory');
    return $info =~ /^$field:(\d+)/m ? $1 : 0;
}

# the largest output buffer of any client but the test's own
sub omem_max {
    my $max = 0;
    for (split /\n/, $t->redis('CLIENT', 'LIST')) {
        next if /cmd=client/;
        $max = $1 if /omem=(\d+)/ && $1 > $max;
    }
    return $max;
}

my $W = $t->ws_session;
my $R = $t->ws_session;
for ($W, $R) {
    my $s = $t->subscribe($_, $DOC, since => 2000, epoch => $EPOCH);
    is($s && $s->{type}, 'subscribed', 'a polite client subscribed at the head');
}

my $wn = 0;

# the polite writer sends $n deltas 20 ms apart while the flood is served;
# every one must be acked and reach the reader in order
sub polite {
    my ($label, $n, $during) = @_;
    my (%acked, @nacks, @seen, $omem, $used, $rss);
    my $used0 = redis_info('used_memory');
    my $rss0 = $t->rss_kb($worker);
    $omem = $used = $rss = 0;
    my @ids = map { 'w' . ++$wn } 1 .. $n;
    my %want = map { $_ => 1 } @ids;
    my $t0 = time;
    my $maxlat = 0;
    for my $id (@ids) {
        my $sent = time;
        $W->send_json({ type => 'delta', doc => $DOC, id => $id, data => { n => $id } });
        my $m = $W->wait_for(sub { ($_[0]{id} // '') eq $id
                                   && $_[0]{type} =~ /^n?ack$/ }, 10);
        if ($m && $m->{type} eq 'ack') { $acked{$id} = $m->{seq} }
        else { push @nacks, $m ? "$id:$m->{type}:" . ($m->{code} // '') : "$id:none" }
        $maxlat = time - $sent if time - $sent > $maxlat;
        $during->() if $during;
        my $o = omem_max();
        $omem = $o if $o > $omem;
        my $u = redis_info('used_memory') - $used0;
        $used = $u if $u > $used;
        my $r = ($t->rss_kb($worker) // 0) - $rss0;
        $rss = $r if $r > $rss;
        sleep 0.02;
    }
    my $deadline = time + 10;
    while (time < $deadline && @seen < $n) {
        my $m = $R->wait_for(sub { $_[0]{type} eq 'delta' && $want{ $_[0]{id} } },
            $deadline - time) or last;
        push @seen, $m->{id};
    }
    is(scalar(@nacks), 0, "$label: every polite delta acked (@nacks[0 .. ($#nacks > 4 ? 4 : $#nacks)])");
    Collab::Test::is_list(\@seen, \@ids, "$label: the reader got every polite delta, in order");
    ok($maxlat < 2, sprintf("$label: the slowest ack took %.3f s", $maxlat));
    ok($omem < $OMEM_MAX, "$label: Redis client output buffers stayed under 8 MB (max $omem)");
    ok($used < $USED_MAX, "$label: Redis used_memory grew by less than 64 MB (+$used)");
    ok($rss < $RSS_MAX, "$label: the worker's RSS grew by less than 64 MB (+${rss} KB)")
        unless $ENV{COLLAB_ASAN};
    # the reader skips what the flood sent it
    $R->clear_pending;
}

sub flood {
    my ($ws, $n, $msg) = @_;
    my $frames = join '', map { Collab::WS::build_frame(opcode => 1,
        payload => ref $msg eq 'CODE' ? $msg->($_) : $msg) } 1 .. $n;
    $ws->send_raw($frames);
}

# what a flooder got back: rate_limited answers and its close code
sub verdict {
    my ($ws, $label, $want_type) = @_;
    my $code = $ws->expect_close(30);
    my @got = @{ $ws->pending };
    my @rl = grep { $_->{type} eq $want_type && ($_->{code} // '') eq 'rate_limited' } @got;
    ok(@rl, "$label: the flooder got $want_type rate_limited (" . scalar(@rl) . ')');
    ok(!@rl || ($rl[0]{retry_after_ms} // 0) > 0, "$label: with retry_after_ms");
    is($code, 4429, "$label: the flooder was closed 4429");
    return @got;
}

###########################################################################
# (a) 5,000 subscribes in one write, to the document the worker follows

{
    my $A = $t->ws_session;
    flood($A, 5000, qq({"type":"subscribe","doc":"$DOC","since":0,"epoch":"$EPOCH"}));
    polite('subscribe flood', 100);
    my @got = verdict($A, 'subscribe flood', 'error');
    my @subd = grep { $_->{type} eq 'subscribed' } @got;
    ok(@subd <= 30, 'subscribe flood: at most a burst of subscribes was served ('
        . scalar(@subd) . ')');
    $A->drop;
}

###########################################################################
# (b) presence flood

{
    my $A = $t->ws_session;
    my $s = $t->subscribe($A, $DOC, since => 2000 + $wn, epoch => $EPOCH);
    is($s && $s->{type}, 'subscribed', 'presence flooder subscribed');
    $R->clear_pending;
    my $pub0 = $t->redis('INFO', 'commandstats') =~ /cmdstat_publish:calls=(\d+)/ ? $1 : 0;
    flood($A, 5000, qq({"type":"presence","doc":"$DOC","data":{"x":1}}));
    polite('presence flood', 100);
    my $code = $A->expect_close(30);
    is($code, 4429, 'presence flood: the flooder was closed 4429');
    # the polite deltas are published too: 100 of the calls
    my $pub = ($t->redis('INFO', 'commandstats') =~ /cmdstat_publish:calls=(\d+)/ ? $1 : 0)
        - $pub0 - 100;
    ok($pub < 400, "presence flood: at most the budget was published ($pub PUBLISH calls)");
    $A->drop;
}

###########################################################################
# (c) state flood

{
    my $A = $t->ws_session;
    flood($A, 5000, qq({"type":"state","doc":"$DOC","seq":1,"data":{"s":1}}));
    polite('state flood', 100);
    my @got = verdict($A, 'state flood', 'error');
    my @served = grep { $_->{type} eq 'ok' || ($_->{code} // '') eq 'conflict' } @got;
    ok(@served <= 60, 'state flood: at most a burst of states was stored ('
        . scalar(@served) . ')');
    $A->drop;
}

###########################################################################
# (d) repeated auth with a good token

{
    my $tok = $t->jwt(claims => { sub => 'mallory', exp => int(time) + 3600 });
    my $A = $t->ws(path => '/jwt');
    $A->send_json({ type => 'auth', token => $tok });
    ok($A->wait_for('welcome', 5), 'auth flooder authenticated');
    flood($A, 5000, qq({"type":"auth","token":"$tok"}));
    polite('auth flood', 100);
    my @got = verdict($A, 'auth flood', 'error');
    my @ok = grep { $_->{type} eq 'ok' } @got;
    ok(@ok <= 30, 'auth flood: at most a burst of tokens was checked (' . scalar(@ok) . ')');
    $A->drop;
}

###########################################################################
# (f) coalescing and the byte budget (collab_rate off: nothing refused)

{
    my $B = $t->ws_session(path => '/fill');
    my $stat = sub {
        my $cs = $t->redis('INFO', 'commandstats');
        my $st = $t->redis('INFO', 'stats');
        my $fc = $cs =~ /cmdstat_fcall:calls=(\d+)/ ? $1 : 0;
        my $out = $st =~ /total_net_output_bytes:(\d+)/ ? $1 : 0;
        return ($fc, $out);
    };
    my ($fc0, $out0) = $stat->();
    flood($B, 5000, qq({"type":"subscribe","doc":"$DOC","since":0,"epoch":"$EPOCH"}));
    polite('coalesced subscribes', 50);
    my ($fc1, $out1) = $stat->();
    # the polite writer's 50 deltas are FCALLs too
    my $reads = $fc1 - $fc0 - 50;
    # one read per free queue of log bytes (16 MB / 256k), never one per subscribe
    ok($reads <= 100, "coalesced subscribes: 5,000 subscribes in one write made $reads log reads");
    # now the flooder reads: one `subscribed`, then the whole log once, in order
    my $head = $t->log_len($DOC);
    my (@seqs, $subd);
    my $deadline = time + 60;
    while (time < $deadline && (!@seqs || $seqs[-1] < $head)) {
        my $m = $B->recv_json($deadline - time) or last;
        $subd++ if $m->{type} eq 'subscribed';
        push @seqs, $m->{seq} if $m->{type} eq 'delta';
    }
    my ($fc2, $out2) = $stat->();
    ok(($subd // 0) >= 1 && ($subd // 0) <= 3, 'coalesced subscribes: answered by one `subscribed` (' . ($subd // 0) . ')');
    Collab::Test::is_list(\@seqs, [1 .. $head], "coalesced subscribes: then 1..$head once, in order");
    my $log_mb = 2000 * 8100 / 1e6;
    my $out_mb = ($out2 - $out0) / 1e6;
    ok($out_mb < 2 * $log_mb, sprintf('byte budget: reading the %.0f MB log sent %.1f MB out of Redis',
        $log_mb, $out_mb));
    $B->close(1000);
}

###########################################################################
# (e) one session's share of the worker's Redis pipeline

{
    my $D2 = 'share';
    my $P = $t->ws_session(instance => 'b');
    my $A = $t->ws_session(instance => 'b');
    $P->send_json({ type => 'delta', doc => $D2, id => 'p0', data => 0 });
    is(($P->wait_for(sub { ($_[0]{id} // '') eq 'p0' }, 5) // {})->{type}, 'ack',
        'share: polite delta acked');
    $t->freeze_redis;
    flood($A, 40, sub { qq({"type":"delta","doc":"$D2","id":"a$_[0]","data":1}) });
    my @rl;
    my $deadline = time + 5;
    while (@rl < 36 && time < $deadline) {
        my $m = $A->wait_for(sub { $_[0]{type} eq 'nack' }, $deadline - time) or last;
        push @rl, $m;
    }
    my @codes = map { $_->{code} } @rl;
    is(scalar(grep { $_ eq 'rate_limited' } @codes), 36,
        'share: with 4 in flight, the flooder\'s other 36 deltas get nack rate_limited ('
        . join(',', @codes[0 .. 2]) . ')');
    ok(!grep({ !$_->{retry_after_ms} } @rl), 'share: with retry_after_ms');
    $P->send_json({ type => 'delta', doc => $D2, id => 'p1', data => 1 });
    sleep 0.3;
    $t->thaw_redis;
    my $m = $P->wait_for(sub { ($_[0]{id} // '') eq 'p1' }, 10);
    is($m && $m->{type}, 'ack', 'share: the polite delta sent meanwhile is acked');
    my @acks = grep { $_->{type} eq 'ack' } $A->collect(1);
    is(scalar(@acks), 4, 'share: the flooder\'s 4 deltas in flight are acked');
    $_->close(1000) for $P, $A;
}

$_->close(1000) for $W, $R;
$t->done;
done_testing;
