#!/usr/bin/perl

# Presence edge cases (docs/protocol.md "presence"): exactly one leave per
# membership when a session unsubscribes and subscribes again at once, when
# one user has two sessions, when Redis restarts without its data (the
# presence keys are lost); sessions that go away while their presence set
# or their snapshot read is in flight (run under COLLAB_ASAN=1).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF sockaddr_in inet_aton);
use Collab::Test;
use Collab::HTTP;

my $t = Collab::Test->new(timeout => 120);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_presence_ttl 2s;
    server {
        listen 127.0.0.1:%%PORT%% sndbuf=32k;
        collab_ping 30s;
        location = /collab {
            collab;
            collab_user $arg_user;
            collab_rate off;
            collab_post_max_messages 1000;
            client_max_body_size 1m;
        }
        location = /slow {
            collab;
            collab_user $arg_user;
            collab_rate off;
            collab_send_queue 64k;
            collab_send_timeout 60s;
        }
    }
EOF
$t->start_nginx;

sub sess { $t->ws_session(path => "/collab?user=$_[0]") }
sub sid { $_[0]{welcome}{session} }

sub is_pres {
    my ($m, $sid, $left) = @_;
    return $m->{type} eq 'presence' && $m->{session} eq $sid
        && ($left ? $m->{left} : !$m->{left});
}

sub count_leaves {
    my ($ws, $sid, $secs) = @_;
    return scalar grep { is_pres($_, $sid, 1) } $ws->collect($secs);
}

my $obs = sess('observer');
is($t->subscribe($obs, 'e')->{type}, 'subscribed', 'observer subscribed');

# --- a snapshot always follows "subscribed", empty when nobody is present,
# also on a re-subscribe, so that the client can replace its view
{
    my $z = sess('zoe');
    $z->send_json({ type => 'subscribe', doc => 'z' });
    my @m = grep { $_->{doc} eq 'z' } $z->collect(1);
    is(join(',', map { $_->{type} } @m), 'subscribed,presence_snapshot',
       'empty: subscribed, then a snapshot');
    ok($m[1] && $m[1]{count} == 0 && !@{ $m[1]{members} } && !$m[1]{truncated},
       'empty: no members');
    $z->send_json({ type => 'subscribe', doc => 'z' });
    @m = grep { $_->{doc} eq 'z' } $z->collect(1);
    is(join(',', map { $_->{type} } @m), 'subscribed,presence_snapshot',
       'empty: again on a re-subscribe');
    $z->close;
}

# --- unsubscribe and subscribe again at once: one leave, then the new one
{
    my $u = sess('ursula');
    $t->subscribe($u, 'e');
    $u->send_json({ type => 'presence', doc => 'e', data => 1 });
    ok($obs->wait_for(sub { is_pres($_[0], sid($u)) }, 5), 'resub: presence seen');
    $u->send_json({ type => 'unsubscribe', doc => 'e' });
    $u->send_json({ type => 'subscribe', doc => 'e' });
    ok($u->wait_for({ type => 'subscribed', doc => 'e' }, 5), 'resub: subscribed again');
    $u->send_json({ type => 'presence', doc => 'e', data => 3 });
    my @m = grep { $_->{type} eq 'presence' && $_->{session} eq sid($u) }
            $obs->collect(1.5);
    is(join(',', map { $_->{left} ? 'left' : $_->{data} } @m), 'left,3',
       'resub: one leave, then the new presence');
    $u->close;
    is(count_leaves($obs, sid($u), 1.5), 1, 'resub: one leave at the close');
}

# --- one user, two sessions: each its own entry and its own leave
{
    my $a1 = sess('twin');
    my $a2 = sess('twin');
    for my $w ($a1, $a2) {
        $t->subscribe($w, 'e');
        $w->send_json({ type => 'presence', doc => 'e', data => sid($w) });
        ok($obs->wait_for(sub { is_pres($_[0], sid($w)) }, 5), 'twin: presence seen');
    }
    $a1->close;
    is(count_leaves($obs, sid($a1), 1.5), 1, 'twin: one leave for the session that closed');
    ok($t->redis('HEXISTS', 'collab:{e}:presence', sid($a2)), 'twin: the other one stays');
    $a2->close;
    is(count_leaves($obs, sid($a2), 1.5), 1, 'twin: then one for the other');
}

# --- sessions that go away with a presence set or a snapshot read in flight
{
    my $v = sess('victor');
    $t->subscribe($v, 'e');
    $v->send_json({ type => 'presence', doc => 'e', data => 'v' });
    ok($obs->wait_for(sub { is_pres($_[0], sid($v)) }, 5), 'inflight: presence seen');
    $t->freeze_redis;
    $v->send_json({ type => 'presence', doc => 'e', data => 'v2' });
    my $s2 = sess('walter');
    $s2->send_json({ type => 'subscribe', doc => 'e' });
    $obs->collect(0.3);
    $v->drop;
    $s2->drop;
    $t->idle(0.3);
    $t->thaw_redis;
    my $w = sess('xena');
    is($t->subscribe($w, 'e')->{type}, 'subscribed', 'inflight: the worker goes on');
    $w->close;
    ok(Collab::Test::wait_until(sub {
        !$t->redis('HEXISTS', 'collab:{e}:presence', sid($v)) }, 8),
       'inflight: the entry goes (leave or expiry)');
    my $n = count_leaves($obs, sid($v), 3);
    ok($n <= 1, "inflight: at most one leave ($n)");
}

# --- a reader whose queue is above half of collab_send_queue: presence
# updates are dropped for it, a leave is not (no ghost member).  Its kernel
# receive buffer is 4096 bytes and the server's send buffer 32k, so what it
# does not read stays in the module's queue.
{
    no warnings 'redefine';
    my $slow = do {
        local *Collab::HTTP::connect_socket = sub {
            my (%c) = @_;
            my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
            setsockopt($s, SOL_SOCKET, SO_RCVBUF, 4096) or die "SO_RCVBUF: $!";
            connect($s, sockaddr_in($c{port}, inet_aton('127.0.0.1'))) or die "connect: $!";
            $s->autoflush(1);
            binmode $s;
            return $s;
        };
        $t->ws_session(path => '/slow?user=sam', pump => 0);
    };
    $t->subscribe($slow, $_) for 'fill', 'g';
    my $m = sess('mia');
    $t->subscribe($m, 'g');
    $m->send_json({ type => 'presence', doc => 'g', data => 'm' });
    ok($slow->wait_for(sub { is_pres($_[0], sid($m)) }, 5), 'slow: presence seen');
    $slow->pump_on(0);
    my $pad = 'p' x 250;
    my $r = $t->post('/collab', [map { { type => 'delta', doc => 'fill', id => "f-$_",
        data => { n => $_, pad => $pad } } } 1 .. 800], timeout => 20);
    is(scalar(grep { $_->{type} eq 'ack' } @{ $r->{json} || [] }), 800, 'slow: filler deltas acked');
    ok(Collab::Test::wait_until(sub { $t->grep_error_log(qr/fell behind on "fill"/) }, 5),
       'slow: its queue is full');
    $m->close;
    ok(Collab::Test::wait_until(sub {
        !$t->redis('HEXISTS', 'collab:{g}:presence', sid($m)) }, 5), 'slow: the entry is gone');
    $t->idle(0.3);
    $slow->pump_on(1);
    is(count_leaves($slow, sid($m), 3), 1, 'slow: the leave reached the reader that was behind');
    ok($slow->is_open, 'slow: still open');
    $slow->close;
}

# --- the presence keys are lost while the log stays (evicted, deleted):
# the refresh finds no entry for a live member, its nginx sends the value
# it holds again, the others see it again, and its leave is published once.
{
    my $q = sess('quinn');
    $t->subscribe($q, 'r');
    my $p = sess('paula');
    $t->subscribe($p, 'r');
    $p->send_json({ type => 'presence', doc => 'r', data => 'p' });
    ok($q->wait_for(sub { is_pres($_[0], sid($p)) }, 5), 'keys lost: presence seen');
    $t->redis('DEL', 'collab:{r}:presence', 'collab:{r}:presence:exp');
    ok($q->wait_for(sub { is_pres($_[0], sid($p)) && $_[0]{data} eq 'p' }, 6),
       'keys lost: the member is shown again');
    ok($t->redis('HEXISTS', 'collab:{r}:presence', sid($p)), 'keys lost: its entry is back');
    ok(!grep({ $_->{type} eq 'resync' } $p->collect(0.2)), 'keys lost: paula stayed a member');
    $p->close;
    is(count_leaves($q, sid($p), 3), 1, 'keys lost: one leave when the member goes');
    $q->close;
}

# --- Redis restarts without its data: the log is new, so every member
# resyncs (t/61-redis-lost.t) and subscribes again as a client does; the
# presence set again is seen, and its leave is published once.
{
    my $q = sess('quinn');
    $t->subscribe($q, 'r2');
    my $p = sess('paula');
    $t->subscribe($p, 'r2');
    $p->send_json({ type => 'presence', doc => 'r2', data => 'p' });
    ok($q->wait_for(sub { is_pres($_[0], sid($p)) }, 5), 'restart: presence seen');
    $t->kill_redis;
    unlink glob($t->dir . '/redis/*.rdb'), glob($t->dir . '/redis/*.aof');
    $t->restart_redis;
    for my $c ($q, $p) {
        ok($c->wait_for({ type => 'resync' }, 10), 'restart: a member resyncs');
        my $s;
        my $deadline = time + 10;
        while (time < $deadline) {
            $s = $t->subscribe($c, 'r2');
            last if $s && $s->{type} eq 'subscribed';
            $t->idle(0.3);
        }
        is($s && $s->{type}, 'subscribed', '... and subscribes again');
    }
    $p->send_json({ type => 'presence', doc => 'r2', data => 'p2' });
    ok($q->wait_for(sub { is_pres($_[0], sid($p)) && $_[0]{data} eq 'p2' }, 5),
       'restart: the presence set again is seen');
    $p->close;
    is(count_leaves($q, sid($p), 3), 1, 'restart: one leave when the member goes');
    $q->close;
}

$obs->close;
$t->done;
done_testing;
