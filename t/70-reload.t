#!/usr/bin/perl

# nginx -s reload / -s quit: WebSocket clients get close 1001, SSE streams
# end, old workers exit within a few seconds (no "open socket left"
# alerts), clients reconnect with since and lose nothing.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use JSON::PP;
use Collab::Test;

my $t = Collab::Test->new(timeout => 120);
$t->start_redis;

my $conf = <<'EOF';
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_ping PING;
        }
    }
EOF
(my $conf30 = $conf) =~ s/PING/30s/;
(my $conf2 = $conf) =~ s/PING/2s/;
$t->write_nginx_conf($conf30, workers => 2);
$t->start_nginx;

my $DOC = 'rl';

sub write_delta {
    my ($id) = @_;
    my $r = $t->post('/collab', [{ type => 'delta', doc => $DOC, id => $id, data => $id }]);
    my $a = $r->{json} && $r->{json}[0];
    return $a && $a->{type} eq 'ack' ? $a->{seq} : undef;
}

sub ws_deltas_until {
    my ($ws, $upto, $secs) = @_;
    my @d;
    my $deadline = time + ($secs // 5);
    while (time < $deadline) {
        my $m = $ws->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{doc} eq $DOC }, $deadline - time) or last;
        push @d, $m->{seq};
        last if $m->{seq} >= $upto;
    }
    return @d;
}

sub sse_deltas_until {
    my ($s, $upto, $secs) = @_;
    my @d;
    my $deadline = time + ($secs // 5);
    while (time < $deadline) {
        my $e = $s->wait_event('delta', $deadline - time) or last;
        push @d, $e;
        last if $e->{json}{seq} >= $upto;
    }
    return @d;
}

# --- clients before the reload
my @ws = map { $t->ws_session } 1 .. 4;
my $epoch;
for my $ws (@ws) {
    my $s = $t->subscribe($ws, $DOC);
    $epoch //= $s && $s->{epoch};
}
my $sse = $t->sse(path => "/collab?doc=$DOC");
ok($sse->wait_event('subscribed', 5), 'SSE subscribed');

is(write_delta("d$_"), $_, "delta $_ acked") for 1 .. 5;
my @seen = ws_deltas_until($ws[0], 5);
is("@seen", '1 2 3 4 5', 'WS client got 1..5');
my @sse_seen = sse_deltas_until($sse, 5);
is(join(' ', map { $_->{json}{seq} } @sse_seen), '1 2 3 4 5', 'SSE client got 1..5');
my $last_id = $sse_seen[-1] && $sse_seen[-1]{id};

# --- reload (with a changed collab_ping)
my @old = $t->reload_nginx(conf => $conf2);
ok(@old >= 2, "old workers: @old");

my $t0 = time;
my @codes = map { $_->expect_close(4) } @ws;
is(join(',', map { $_ // 'none' } @codes), join(',', (1001) x @ws), 'every WS client got close 1001');
ok(time - $t0 < 4, sprintf('within %.1fs', time - $t0));
ok(!grep({ !$_->wait_eof(3) } @ws), 'and their TCP connections closed');
ok($sse->wait_end(4), 'SSE stream ended');

ok(Collab::Test::wait_until(sub { !grep { $t->pid_alive($_) } @old }, 5),
    'old workers exited within 5s') or diag 'still alive: ' . join ' ', grep { $t->pid_alive($_) } @old;

# writes keep going on the new workers
my @after;
push @after, write_delta("d$_") for 6 .. 8;
is("@after", '6 7 8', 'deltas 6..8 acked by the new workers');

# reconnect with since and Last-Event-ID: nothing lost
my $re = $t->ws_session;
is($re->{welcome}{heartbeat}, 2, 'new workers run the new configuration (heartbeat 2)');
my $s = $t->subscribe($re, $DOC, since => $seen[-1], epoch => $epoch);
ok($s && !exists $s->{state}, 'WS resume with since after reload');
is(join(' ', ws_deltas_until($re, 8)), '6 7 8', 'WS client lost nothing');

my $rsse = $t->sse(path => "/collab?doc=$DOC", headers => ["Last-Event-ID: $last_id"]);
ok($rsse->wait_event('subscribed', 5), 'SSE resume with Last-Event-ID after reload');
is(join(' ', map { $_->{json}{seq} } sse_deltas_until($rsse, 8)), '6 7 8', 'SSE client lost nothing');

is(write_delta('d9'), 9, 'delta 9');
is(join(' ', ws_deltas_until($re, 9)), '9', 'live after resume (WS)');
is(join(' ', map { $_->{json}{seq} } sse_deltas_until($rsse, 9)), '9', 'live after resume (SSE)');

# a second reload in a row, with sessions that never subscribed
my @idle = map { $t->ws_session } 1 .. 3;
@old = $t->reload_nginx;
is(join(',', map { $_->expect_close(4) // 'none' } @idle, $re), '1001,1001,1001,1001',
    'second reload: close 1001 for idle and subscribed sessions');
ok($rsse->wait_end(4), 'second reload: SSE ended');
ok(Collab::Test::wait_until(sub { !grep { $t->pid_alive($_) } @old }, 5), 'second reload: old workers exited');

# --- clients that reconnect while the new workers are still connecting to
# Redis (the thundering herd after a reload) are served, not refused.
# Redis is frozen for 0.3s so that the window is wide enough to hit.
# ASSUMPTION: commands issued before a worker's Redis connection is ready wait
# for it (within the connect/command timeouts) instead of failing `unavailable`
$t->freeze_redis;
@old = $t->reload_nginx;
my $early = $t->ws_session;
$early->send_json({ type => 'subscribe', doc => $DOC });
select undef, undef, undef, 0.3;
$t->thaw_redis;
my $es = $early->wait_for(sub { $_[0]{type} =~ /^(subscribed|error)$/ }, 5);
is($es && $es->{type}, 'subscribed', 'subscribe sent before the new worker reached Redis is served')
    or diag explain $es;
is(write_delta('d10'), 10, 'and writes work');
$early->close;
Collab::Test::wait_until(sub { !grep { $t->pid_alive($_) } @old }, 5);

# --- quit
my $q = $t->ws_session;
$t->subscribe($q, $DOC);
my $qs = $t->sse(path => "/collab?doc=$DOC");
$qs->wait_event('subscribed', 5);
my $master = $t->master_pid;
my @workers = $t->worker_pids;
$t0 = time;
kill 'QUIT', $master;
is($q->expect_close(4), 1001, 'quit: WS client got close 1001');
ok($qs->wait_end(4), 'quit: SSE stream ended');
ok($t->quit_nginx(timeout => 5), 'quit: master exited within 5s');
ok(!grep({ $t->pid_alive($_) } @workers), 'quit: workers gone');

# nothing acked was lost
is($t->log_len($DOC), 10, 'log holds the 10 deltas');

$t->done;
done_testing;
