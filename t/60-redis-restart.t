#!/usr/bin/perl

# Redis outages (appendonly yes, appendfsync always):
#   kill -9 + restart: sessions stay open, deltas during the outage get
#   `nack unavailable`, every acked delta survives, subscribers fill the gap;
#   SIGSTOP: `nack unavailable` within the command timeout (timeout=1s),
#   SIGCONT: recovery, and a retried op id is stored once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use JSON::PP;
use Collab::Test;

my $t = Collab::Test->new(timeout => 150);
$t->start_redis(appendonly => 1);
$t->write_nginx_conf(<<'EOF', workers => 2);
    collab_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s connect_timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_ping 30s;
        }
    }
EOF
$t->start_nginx;

my $DOC = 'rr';
my %acked;    # id => seq

sub send_delta {
    my ($ws, $id, $data) = @_;
    $ws->send_json({ type => 'delta', doc => $DOC, id => $id, data => $data // $id });
    my $t0 = time;
    my $m = $ws->wait_for(sub { $_[0]{type} =~ /^n?ack$/ && $_[0]{id} eq $id }, 8);
    $acked{$id} = $m->{seq} if $m && $m->{type} eq 'ack';
    return ($m, time - $t0);
}

# retry an op until it is acked (or $secs pass); returns the ack
sub until_acked {
    my ($ws, $id, $secs) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        my ($m) = send_delta($ws, $id);
        return $m if $m && $m->{type} eq 'ack';
        $t->idle(0.3);
    }
    return undef;
}

# all deltas of $DOC the subscriber gets until it has seq $upto
sub collect_until {
    my ($ws, $list, $upto, $secs) = @_;
    my $deadline = time + $secs;
    while (time < $deadline && (!@$list || $list->[-1]{seq} < $upto)) {
        my $m = $ws->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{doc} eq $DOC }, 0.5) or next;
        push @$list, $m;
    }
}

sub check_log {
    my ($what) = @_;
    my @log = $t->log_entries($DOC);
    my %log = map { $_->{id} => $_->{seq} } @log;
    my @missing = grep { !defined $log{$_} || $log{$_} != $acked{$_} } sort keys %acked;
    ok(!@missing, "$what: every acked delta is in the log with its seq")
        or diag "missing: @missing";
    is(join(',', map { $_->{seq} } @log), join(',', 1 .. scalar @log), "$what: log seqs are dense");
    return @log;
}

my $s = $t->ws_session;
my $w = $t->ws_session;
ok($t->subscribe($s, $DOC), 'subscriber');
ok($t->subscribe($w, $DOC), 'writer subscribed');
my @seen;

for my $i (1 .. 5) {
    my ($m) = send_delta($w, "pre$i");
    is($m && $m->{seq}, $i, "pre$i acked with seq $i");
}
collect_until($s, \@seen, 5, 5);
is(join(',', map { $_->{seq} } @seen), '1,2,3,4,5', 'subscriber got 1..5');

# --- kill -9
$t->kill_redis;
$t->idle(0.2);
for my $i (1 .. 3) {
    my ($m, $el) = send_delta($w, "out$i");
    is($m && $m->{type}, 'nack', "delta during the outage ($i) => nack");
    is($m && $m->{code}, 'unavailable', "... code unavailable");
    ok($el < 3.5, sprintf('... within %.1fs', $el));
    ok(defined($m && $m->{message}), '... with a message');
}
ok($s->is_open, 'subscriber session stays open during the outage');
ok($w->is_open, 'writer session stays open during the outage');
$w->send_ping('alive');
my $f = $w->recv_msg(3, return_control => 1);
$f = $w->recv_msg(3, return_control => 1) while $f && !($f->{control} && $f->{opcode} == 10);
ok($f && $f->{payload} eq 'alive', 'sessions answer pings during the outage');

# ASSUMPTION: a new WebSocket gets its welcome while Redis is down (auth off
# needs no Redis); subscribing then fails with `error unavailable`
my $n = eval { $t->ws_session };
ok($n, 'new session welcomed during the outage') or diag $@;
if ($n) {
    my $e = $t->subscribe($n, 'other');
    is($e && $e->{type}, 'error', 'subscribe during the outage => error');
    is($e && $e->{code}, 'unavailable', '... unavailable');
    $n->close;
}
my $r = $t->post('/collab', [{ type => 'delta', doc => $DOC, id => 'post-out', data => 1 }]);
is($r->{status}, 200, 'POST during the outage: 200');
is($r->{json} && $r->{json}[0]{code}, 'unavailable', 'POST during the outage: nack unavailable');

$t->restart_redis;
is($t->log_len($DOC), 5, 'AOF kept the 5 acked deltas');

my $ack = until_acked($w, 'post1', 15);
ok($ack, 'writes succeed again after Redis is back');
is($ack && $ack->{seq}, 6, 'seq continues at 6');
for my $i (2 .. 10) {
    my ($m) = send_delta($w, "post$i");
    is($m && $m->{type}, 'ack', "post$i acked") or diag explain $m;
}
my $head = (sort { $b <=> $a } values %acked)[0];
is($head, 15, 'head seq 15');

my @log = check_log('after kill -9');
ok(!grep({ $_->{id} =~ /^out|^post-out$/ } @log), 'nacked deltas are not in the log');

collect_until($s, \@seen, $head, 15);
is(join(',', map { $_->{seq} } @seen), join(',', 1 .. $head),
    'subscriber saw 1..15 without gap or duplicate across the restart');
is(join(',', map { $_->{id} } @seen[5 .. $#seen]), join(',', map { "post$_" } 1 .. 10),
    '... the ops written after the restart');

# a subscriber that missed the outage catches up with since
my $late = $t->ws_session;
my $sub = $t->subscribe($late, $DOC, since => 3);
my @late;
collect_until($late, \@late, $head, 5);
is(join(',', map { $_->{seq} } @late), join(',', 4 .. $head), 'since=3 after the restart replays 4..15');
$late->close;

# --- only the pub/sub connections die: published deltas are lost on the
# wire, the subscriber must fill the gap from the log
my $killed = $t->redis('CLIENT', 'KILL', 'TYPE', 'pubsub');
ok($killed >= 1, "killed $killed pub/sub connection(s)");
my @gap;
for my $i (1 .. 5) {
    my $r = $t->post('/collab', [{ type => 'delta', doc => $DOC, id => "gap$i", data => $i }]);
    my $a = $r->{json} && $r->{json}[0];
    push @gap, $a && $a->{type} eq 'ack' ? $a->{seq} : 'x';
    $acked{"gap$i"} = $a->{seq} if $a && $a->{type} eq 'ack';
}
is("@gap", '16 17 18 19 20', 'deltas acked right after the pub/sub connections died');
collect_until($s, \@seen, 20, 10);
is(join(',', map { $_->{seq} } @seen), join(',', 1 .. 20),
    'subscriber filled the gap from the log (1..20, no duplicate)');
my ($m0) = send_delta($w, 'after-gap');
collect_until($s, \@seen, 21, 5);
is($seen[-1] && $seen[-1]{id}, 'after-gap', 'and gets live deltas again');

# --- SIGSTOP: the command watchdog
$t->freeze_redis;
my ($m, $el) = send_delta($w, 'frozen1');
is($m && $m->{type}, 'nack', 'delta while Redis is frozen => nack');
is($m && $m->{code}, 'unavailable', '... unavailable');
ok($el >= 0.5 && $el < 3, sprintf('... after the 1s command timeout (%.2fs)', $el));
ok($s->is_open && $w->is_open, 'sessions stay open while Redis is frozen');
my ($m2, $el2) = send_delta($w, 'frozen2');
is($m2 && $m2->{code}, 'unavailable', 'second delta while frozen => unavailable');
ok($el2 < 3, sprintf('... within %.2fs', $el2));
$t->thaw_redis;

# the outcome of a timed-out command is unknown (Redis may still run it once
# it wakes up): the client retries with the same id and gets one seq
$ack = until_acked($w, 'frozen1', 15);
ok($ack, 'recovered after SIGCONT');
my $seq1 = $ack && $ack->{seq};
$ack = until_acked($w, 'frozen1', 5);
is($ack && $ack->{seq}, $seq1, 'retry of frozen1 gets the same seq');
until_acked($w, 'frozen2', 5);
my ($m3) = send_delta($w, 'after-thaw');
is($m3 && $m3->{type}, 'ack', 'new delta after thaw acked');

@log = check_log('after SIGSTOP/SIGCONT');
is(scalar(grep { $_->{id} eq 'frozen1' } @log), 1, 'frozen1 stored exactly once');
is(scalar(grep { $_->{id} eq 'frozen2' } @log), 1, 'frozen2 stored exactly once');
$head = scalar @log;

collect_until($s, \@seen, $head, 10);
is(join(',', map { $_->{seq} } @seen), join(',', 1 .. $head),
    "subscriber saw 1..$head without gap or duplicate after SIGSTOP/SIGCONT");

$s->close;
$w->close;

$t->done;
done_testing;
