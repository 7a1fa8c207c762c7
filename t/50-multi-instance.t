#!/usr/bin/perl

# Two nginx instances (2 workers each) on one Redis: deltas cross
# instances; 1,000 deltas from 10 concurrent writers on one doc get seq
# 1..1000, seen identically and in order by every subscriber on both
# instances (WebSocket and SSE); a subscriber dropped mid-stream that
# resumes with `since` ends with exactly the same sequence.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use JSON::PP;
use POSIX ();
use IO::Handle;
use Collab::Test;
use Collab::WS;

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

my $t = Collab::Test->new(timeout => 150);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 2);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_send_queue 1m;
        }
    }
EOF
$t->start_nginx;
$t->start_nginx(name => 'b');
isnt($t->port('b'), $t->port, 'two instances on two ports');

# --- a delta on A reaches B and back
{
    my $wa = $t->ws_session;
    my $wb = $t->ws_session(instance => 'b');
    my $sa = $t->subscribe($wa, 'cross');
    my $sb = $t->subscribe($wb, 'cross');
    is($sa && $sa->{epoch}, $sb && $sb->{epoch}, 'both instances see the same epoch');
    $wa->send_json({ type => 'delta', doc => 'cross', id => 'from-a', data => 'A' });
    my $m = $wb->wait_for({ type => 'delta', id => 'from-a' }, 5);
    ok($m && $m->{seq} == 1 && $m->{data} eq 'A', 'delta on A reaches B');
    $wb->send_json({ type => 'delta', doc => 'cross', id => 'from-b', data => 'B' });
    $m = $wa->wait_for({ type => 'delta', id => 'from-b' }, 5);
    ok($m && $m->{seq} == 2 && $m->{data} eq 'B', 'delta on B reaches A');
    $wa->close;
    $wb->close;
}

# --- 10 concurrent writers x 100 deltas
my $DOC = 'storm';
my $WRITERS = 10;
my $PER = 100;
my $TOTAL = $WRITERS * $PER;

# fork the writers first so that they hold no copy of the subscribers' sockets
my (@kids, @go);
for my $k (1 .. $WRITERS) {
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        close $w;
        alarm 0;
        my $rc = eval { writer($k, $r); 0 } // do { print STDERR "writer $k: $@"; 1 };
        POSIX::_exit($rc);
    }
    close $r;
    $w->autoflush(1);
    push @kids, $pid;
    push @go, $w;
}

sub writer {
    my ($k, $go) = @_;
    my $inst = $k % 2 ? undef : 'b';
    my $ws = $t->ws_session(instance => $inst);
    scalar <$go>;    # wait for the start signal
    open my $out, '>', $t->dir . "/writer-$k.txt" or die "$!";
    my $n = 0;
    while ($n < $PER) {
        my @win = ($n + 1 .. ($n + 5 > $PER ? $PER : $n + 5));
        for my $i (@win) {
            $ws->send_json({ type => 'delta', doc => $DOC, id => "w$k-$i", data => { k => $k, i => $i } });
        }
        for my $i (@win) {
            my $a = $ws->wait_for(sub { $_[0]{type} =~ /^n?ack$/ && $_[0]{id} eq "w$k-$i" }, 10);
            print $out "w$k-$i " . ($a ? ($a->{type} eq 'ack' ? $a->{seq} : "nack:$a->{code}") : 'timeout') . "\n";
        }
        $n += @win;
        $t->idle(0.06);    # keeps the stream going while a subscriber drops
    }
    close $out;
    $ws->close;
}

# subscribers: two per instance (likely on both workers), an SSE stream, and
# one that will be dropped mid-stream
my %subs = (
    a1 => $t->ws_session,
    a2 => $t->ws_session,
    b1 => $t->ws_session(instance => 'b'),
    b2 => $t->ws_session(instance => 'b'),
    drop => $t->ws_session(instance => 'b'),
);
my $epoch;
for my $name (sort keys %subs) {
    my $s = $t->subscribe($subs{$name}, $DOC);
    ok($s && $s->{type} eq 'subscribed', "subscriber $name subscribed");
    $epoch //= $s && $s->{epoch};
}
my $sse = $t->sse(path => "/collab?doc=$DOC");
ok($sse->wait_event('subscribed', 5), 'SSE subscriber (A) subscribed');

my %seen = map { $_ => [] } keys %subs, 'sse';
my @drop_before;
my ($dropped, $reconnect_at, $resumed_sub, $head_at_drop, $head_at_resume);

print $_ "go\n" for @go;
close $_ for @go;

my $deadline = time + 60;
my $all_done = sub {
    for my $n (keys %seen) {
        my $l = $seen{$n};
        return 0 unless @$l && $l->[-1]{seq} >= $TOTAL;
    }
    return 1;
};
while (time < $deadline && !$all_done->()) {
    for my $name (keys %subs) {
        my $ws = $subs{$name} or next;
        while (my $m = $ws->recv_json(0)) {
            next unless ($m->{type} // '') eq 'delta' && $m->{doc} eq $DOC;
            push @{ $seen{$name} }, { seq => $m->{seq}, id => $m->{id} };
        }
    }
    while (my $e = $sse->next_event(0)) {
        next unless ($e->{event} // '') eq 'delta';
        push @{ $seen{sse} }, { seq => $e->{json}{seq}, id => $e->{json}{id} };
    }
    # drop a subscriber mid-stream, then resume it with since
    if (!$dropped && @{ $seen{drop} } >= 50) {
        $subs{drop}->drop;
        delete $subs{drop};
        $dropped = 1;
        @drop_before = @{ $seen{drop} };
        $head_at_drop = $t->redis('XLEN', "collab:{$DOC}:log");
        $seen{drop} = [];
        $reconnect_at = time + 0.2;
    }
    if ($dropped && $reconnect_at && time >= $reconnect_at) {
        $reconnect_at = undef;
        my $ws = $t->ws_session(instance => 'b');
        $head_at_resume = $t->redis('XLEN', "collab:{$DOC}:log");
        $resumed_sub = $t->subscribe($ws, $DOC, since => $drop_before[-1]{seq}, epoch => $epoch);
        $subs{drop} = $ws;
    }
    Collab::WS::wait_any([values %subs], 0.05);
}

my %wstat;
for my $pid (@kids) {
    waitpid($pid, 0);
    $wstat{$? == 0 ? 'ok' : 'fail'}++;
}
is($wstat{ok} // 0, $WRITERS, 'all writers finished');

# writers' acks
my %ack;
my @bad;
for my $k (1 .. $WRITERS) {
    open my $fh, '<', $t->dir . "/writer-$k.txt" or next;
    while (<$fh>) {
        my ($id, $seq) = split;
        if ($seq =~ /^\d+$/) { $ack{$seq}{$id}++ } else { push @bad, "$id $seq" }
    }
}
ok(!@bad, 'every delta acked') or diag join "\n", @bad[0 .. ($#bad > 9 ? 9 : $#bad)];
is(scalar keys %ack, $TOTAL, "$TOTAL distinct seqs acked");
Collab::Test::is_list([sort { $a <=> $b } keys %ack], [1 .. $TOTAL], "acked seqs are exactly 1..$TOTAL");
ok(!grep({ keys %{ $ack{$_} } != 1 } keys %ack), 'one op per seq');
my %id_of = map { $_ => (keys %{ $ack{$_} })[0] } keys %ack;

my @want = 1 .. $TOTAL;
my @want_ids = map { $id_of{$_} // '?' } 1 .. $TOTAL;
sub is_list { Collab::Test::is_list(@_) }
for my $name (sort grep { $_ ne 'drop' } keys %seen) {
    my $l = $seen{$name};
    is_list([map { $_->{seq} } @$l], \@want, "subscriber $name saw seq 1..$TOTAL in order");
    is_list([map { $_->{id} } @$l], \@want_ids, "subscriber $name saw the acked op for every seq");
}

ok($dropped && $head_at_drop < $TOTAL, 'a subscriber was dropped mid-stream after '
    . scalar(@drop_before) . ' deltas (log head ' . ($head_at_drop // '?') . ')');
note 'it resumed when the log head was ' . ($head_at_resume // '?');
ok($resumed_sub && $resumed_sub->{type} eq 'subscribed' && !exists $resumed_sub->{state},
    'it resumed with since (no state)');
my @joined = (@drop_before, @{ $seen{drop} });
is_list([map { $_->{seq} } @joined], \@want, 'dropped + resumed subscriber ends with exactly 1..1000');
is_list([map { $_->{id} } @joined], \@want_ids, '... with the same ops');

is($t->log_len($DOC), $TOTAL, "log holds $TOTAL entries");
my @log = $t->log_entries($DOC);
is_list([map { $_->{seq} } @log], \@want, 'log seqs 1..1000 in stream order');
is_list([map { $_->{id} } @log], \@want_ids, 'log ops match the acks');

$_->close for values %subs;
$sse->close;

$t->done;
done_testing;
