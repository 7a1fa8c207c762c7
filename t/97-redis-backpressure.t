#!/usr/bin/perl

# Redis backpressure and ingress backpressure (docs/limits.md):
#   Redis frozen (SIGSTOP) with collab_redis timeout=1s: a delta gets
#   `nack unavailable` within ~1.5 s, later ones at once while the worker
#   reconnects; after SIGCONT everything recovers by itself: retries and new
#   deltas are acked, a subscription that stayed open keeps delivering with
#   no gap.  collab_redis max_inflight=1 (second instance): with Redis frozen
#   a second delta gets `nack unavailable` immediately, well under the
#   timeout.  collab_max_inflight 4: with Redis frozen a client that pipelines
#   deltas is not read from (its socket's send side fills), at most 4 of its
#   deltas reach Redis, and nginx does not grow.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Select;
use Socket qw(SOL_SOCKET SO_SNDBUF);
use Errno qw(EAGAIN EWOULDBLOCK);
use Collab::Test;
use Collab::WS;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s connect_timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_ping 30s;
        collab_rate off;
        location = /collab {
            collab;
        }
        location = /bp {
            collab;
            collab_max_inflight 4;
        }
    }
EOF
$t->start_nginx;

$t->write_nginx_conf(<<'EOF', name => 'b');
    collab_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s connect_timeout=1s max_inflight=1;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_ping 30s;
        collab_rate off;
        location = /collab {
            collab;
        }
    }
EOF
$t->start_nginx(name => 'b');

# the reconnects while Redis is frozen are logged at [error], not [alert]
sub delta { my ($doc, $id, $data) = @_; { type => 'delta', doc => $doc, id => $id, data => $data // $id } }
sub reply_of {
    my ($ws, $id, $secs) = @_;
    my $t0 = time;
    my $m = $ws->wait_for(sub { ($_[0]{type} eq 'ack' || $_[0]{type} eq 'nack') && ($_[0]{id} // '') eq $id }, $secs);
    return ($m, time - $t0);
}
sub what { my $m = shift; $m ? $m->{type} . ($m->{code} ? ":$m->{code}" : '') : 'nothing' }

# thaw and wait until the worker(s) took their connections back
sub thaw {
    $t->thaw_redis;
    $t->wait_redis(5);
}

###########################################################################
# 1. Redis frozen: nack unavailable within the timeout, recovery after SIGCONT

{
    my $DOC = 'frozen';
    my $sub = $t->ws_session;
    my $w = $t->ws_session;
    is($t->subscribe($sub, $DOC)->{type}, 'subscribed', 'subscribed');
    $w->send_json(delta($DOC, 'a1'));
    is(what((reply_of($w, 'a1', 3))[0]), 'ack', 'before the freeze: ack');

    $t->freeze_redis;
    my $t0 = time;
    $w->send_json(delta($DOC, 'a2'));
    my ($m, $dt) = reply_of($w, 'a2', 5);
    is(what($m), 'nack:unavailable', 'Redis frozen: nack unavailable');
    ok($dt < 1.6, sprintf('within the timeout of 1s + slack (%.2f s)', $dt));
    ok($dt > 0.5, 'not before the command had a chance');

    # the worker reconnects meanwhile (the frozen Redis accepts TCP but
    # answers nothing): new deltas are refused at once
    $w->send_json(delta($DOC, 'a3'));
    ($m, $dt) = reply_of($w, 'a3', 3);
    is(what($m), 'nack:unavailable', 'while reconnecting: nack unavailable');
    ok($dt < 1.2, sprintf('without waiting for a timeout (%.2f s)', $dt));
    $t->idle(0.8);
    ok($w->is_open && $sub->is_open, 'the sessions stay open');
    ok($t->grep_error_log(qr/\[error\].*collab: redis command connection to .* dropped: command timed out/),
        'error: command connection dropped: command timed out');

    thaw();
    my $thawed = time;
    # a client retries its unacked deltas with the same ids until acked
    my %acked;
    my $deadline = time + 10;
    for my $id ('a2', 'a3') {
        while (time < $deadline) {
            $w->send_json(delta($DOC, $id));
            my ($r) = reply_of($w, $id, 2);
            if ($r && $r->{type} eq 'ack') { $acked{$id} = $r->{seq}; last }
            $t->idle(0.2);
        }
    }
    my $rec = time - $thawed;
    ok($acked{a2} && $acked{a3}, sprintf('after SIGCONT the retries are acked (%.1f s)', $rec));
    ok($rec < 8, 'recovered by itself within 8 s');
    $w->send_json(delta($DOC, 'a4'));
    is(what((reply_of($w, 'a4', 3))[0]), 'ack', 'a new delta is acked');

    # the subscription that stayed open delivers everything, in order, once
    my $head = $t->log_len($DOC);
    my @seqs;
    my $end = time + 5;
    while (time < $end && (!@seqs || $seqs[-1] < $head)) {
        my $d = $sub->recv_json($end - time) or last;
        push @seqs, $d->{seq} if $d->{type} eq 'delta';
    }
    Collab::Test::is_list(\@seqs, [1 .. $head], "the subscriber gets 1..$head, no gap, no dup, without re-subscribing");
    my $ids = join ',', map { $_->{id} } $t->log_entries($DOC);
    ok($ids =~ /^a1,(a2,a3|a3,a2),a4$/ || $ids =~ /^a1,a2,a3,a4$/,
        "each retried id stored once ($ids)");
    $_->close(1000) for $sub, $w;
}

###########################################################################
# 2. collab_redis max_inflight=1: the second command is refused at once

{
    my $DOC = 'mi';
    my $w = $t->ws_session(instance => 'b');
    $w->send_json(delta($DOC, 'm0'));
    is(what((reply_of($w, 'm0', 3))[0]), 'ack', 'max_inflight=1: ack while Redis answers');

    $t->freeze_redis;
    my $t0 = time;
    $w->send_json(delta($DOC, 'm1'));
    $w->send_json(delta($DOC, 'm2'));
    my ($m2, $dt2) = reply_of($w, 'm2', 3);
    is(what($m2), 'nack:unavailable', 'the second delta in flight: nack unavailable');
    ok($dt2 < 0.5, sprintf('immediately (%.3f s), well under the 1s timeout', $dt2));
    my ($m1) = reply_of($w, 'm1', 3);
    my $dt1 = time - $t0;
    is(what($m1), 'nack:unavailable', 'the first one: nack unavailable when the watchdog fires');
    ok($dt1 > 0.7 && $dt1 < 1.6, sprintf('after ~1s (%.2f s)', $dt1));
    ok($t->grep_error_log(qr/\[warn\].*collab: 1 Redis commands in flight, refusing more/),
        'warn: Redis commands in flight, refusing more');

    thaw();
    my $ok;
    my $deadline = time + 10;
    while (!$ok && time < $deadline) {
        $w->send_json(delta($DOC, 'm3'));
        my ($r) = reply_of($w, 'm3', 2);
        $ok = $r && $r->{type} eq 'ack';
        $t->idle(0.2) unless $ok;
    }
    ok($ok, 'after SIGCONT: acked again');
    $w->close(1000);
}

###########################################################################
# 3. collab_max_inflight 4: a client pipelining deltas into a frozen Redis

{
    my $DOC = 'bp';

    # with Redis answering: 500 pipelined deltas in one write are all acked
    my $ws = $t->ws_session(path => '/bp');
    my $burst = join '', map { Collab::WS::build_frame(opcode => 1,
        payload => Collab::Test::json_encode(delta('bp-ok', "k$_"))) } 1 .. 500;
    $ws->send_raw($burst);
    my @acks = grep { $_->{type} eq 'ack' } map { $ws->wait_for({ id => "k$_" }, 5) // () } 1 .. 500;
    is(scalar @acks, 500, 'collab_max_inflight 4, Redis answering: 500 pipelined deltas all acked');
    is(join(',', map { $_->{seq} } @acks), join(',', 1 .. 500), 'in order');

    my ($worker) = $t->worker_pids;
    my $rss0 = $t->rss_kb($worker);
    my $x = $t->ws_session(path => '/bp');
    setsockopt($x->socket, SOL_SOCKET, SO_SNDBUF, 65536);
    $t->freeze_redis;
    my $t0 = time;

    # 8 MB of deltas, written without blocking for 0.6 s
    my $one = sub { Collab::WS::build_frame(opcode => 1,
        payload => Collab::Test::json_encode(delta($DOC, "x$_[0]", 'v' x 100))) };
    my ($n, $bytes, $buf) = (0, 0, '');
    my $sock = $x->socket;
    $sock->blocking(0);
    my $stalled_at;
    while (time < $t0 + 0.6 && $bytes < 8 * 1024 * 1024) {
        $buf .= $one->(++$n) while length $buf < 65536;
        my $k = syswrite($sock, $buf);
        if (defined $k && $k > 0) {
            $bytes += $k;
            substr($buf, 0, $k) = '';
            next;
        }
        $stalled_at //= time - $t0;
        IO::Select->new($sock)->can_write(0.05);
    }
    my $writable = IO::Select->new($sock)->can_write(0.2) ? 1 : 0;
    $sock->blocking(1);
    my $rss1 = $t->rss_kb($worker);
    my $sent = int($bytes / length($one->(1)));
    ok(defined $stalled_at && $bytes < 2 * 1024 * 1024,
        sprintf('the client is pushed back: %d kB (~%d deltas) written in 0.6 s, then the socket is full', $bytes / 1024, $sent));
    is($writable, 0, 'still not writable: nginx does not read it');
    my @early = grep { $_->{type} eq 'nack' || $_->{type} eq 'ack' } $x->collect(0);
    is(scalar @early, 0, 'no reply before the watchdog: the deltas wait (none refused, none queued without bound)');
    ok(($rss1 - $rss0) < 4 * 1024, sprintf('worker RSS grew by %.2f MB (bound 4 MB)', ($rss1 - $rss0) / 1024));

    # the watchdog fires at ~1s: the deltas in flight fail, then nginx reads
    # on and refuses the rest at once (Redis is still frozen)
    my @r;
    my $deadline = time + 8;
    my %seen;
    while (time < $deadline && keys %seen < $sent) {
        my $m = $x->recv_json(1) or next;
        next unless $m->{type} eq 'nack' || $m->{type} eq 'ack';
        $seen{ $m->{id} } = $m;
        push @r, [time - $t0, $m];
    }
    ok(@r && $r[0][0] > 0.8, sprintf('the first replies come with the watchdog (%.2f s)', @r ? $r[0][0] : -1));
    ok(!(grep { what($_->[1]) ne 'nack:unavailable' } @r), 'all nack unavailable');
    ok(scalar(keys %seen) >= $sent - 100, sprintf('what the client wrote is answered (%d of ~%d)', scalar(keys %seen), $sent));

    # the client stops; once Redis runs again, the log shows what was sent to it
    $x->drop;
    thaw();
    $t->idle(0.5);
    my $stored = $t->log_len($DOC);
    ok($stored <= 4, "at most collab_max_inflight = 4 deltas of the session reached Redis ($stored)");
    ok($t->grep_error_log(qr/collab: redis command connection ready/), 'the worker reconnected');
    $ws->close(1000);
}

$t->done;
done_testing;
