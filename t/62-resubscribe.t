#!/usr/bin/perl

# Leave and join the same document faster than Redis answers (one worker,
# one subscriber connection): the channel is never subscribed again while
# its UNSUBSCRIBE is in flight (hiredis forgets the channel on that reply,
# whatever was sent after it), so no message goes to another document's
# callback, no document is freed while a reply can reach it (run it with
# `make test-asan TEST=t/62-resubscribe.t`), and the channel ends with
# exactly the subscriptions the sessions hold.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 120);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_rate off;
        }
    }
EOF
$t->start_nginx;

my $a = $t->ws_session;
my $b = $t->ws_session;
my $w = $t->ws_session;
is($t->subscribe($a, 'other')->{type}, 'subscribed', 'A follows "other"');

sub numsub {
    my $r = $t->redis('PUBSUB', 'NUMSUB', "collab:{$_[0]}");
    return $r->[1];
}

sub write_acked {
    my ($doc, $id) = @_;
    $w->send_json({ type => 'delta', doc => $doc, id => $id, data => $id });
    my $m = $w->wait_for(sub { ($_[0]{id} // '') eq $id }, 10);
    return $m && $m->{type} eq 'ack';
}

my $n = 0;
for my $round (1 .. 4) {
    # B joins and leaves "x" 150 times in one burst, then stays or leaves
    my $stay = $round % 2;
    my $burst = '';
    for (1 .. 150) {
        $b->send_json({ type => 'subscribe', doc => 'x' });
        $b->send_json({ type => 'unsubscribe', doc => 'x' });
    }
    $b->send_json({ type => 'subscribe', doc => 'x' }) if $stay;
    $b->drain(1);
    if ($stay) {
        is($t->subscribe($b, 'x')->{type}, 'subscribed', "round $round: B follows x");
        ok(Collab::Test::wait_until(sub { numsub('x') == 1 }, 10),
           "round $round: x subscribed once in Redis");
    } else {
        ok(Collab::Test::wait_until(sub { numsub('x') == 0 }, 10),
           "round $round: B left x: unsubscribed in Redis");
    }
    is(numsub('other'), 1, "round $round: other subscribed once");

    # a delta on x goes to B (if it stays), never to A
    $n++;
    ok(write_acked('x', "x$n"), "round $round: delta x$n acked");
    if ($stay) {
        my $m = $b->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq "x$n" }, 10);
        ok($m && $m->{doc} eq 'x', "round $round: B receives x$n as a delta of x");
    }
    ok(write_acked('other', "o$n"), "round $round: delta o$n acked");
    my $m = $a->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq "o$n" }, 10);
    ok($m && $m->{doc} eq 'other', "round $round: A receives o$n");
    my @wrong = grep { $_->{type} eq 'delta' && $_->{id} =~ /^x/ } $a->collect(0.3);
    is(scalar @wrong, 0, "round $round: A never receives a delta of x");
    if ($stay) {
        $b->send_json({ type => 'unsubscribe', doc => 'x' });
        $b->wait_for({ type => 'unsubscribed' }, 10);
    }
}

$_->close(1000) for $a, $b, $w;
$t->done;
done_testing;
