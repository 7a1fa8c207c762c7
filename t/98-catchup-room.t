#!/usr/bin/perl

# Catching up from the log with deltas of very different sizes: a read that
# stops because the next delta does not fit in the send queue must go on
# once the queue drains, even when the queue was under half full when it
# stopped.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_rate off;
            collab_max_message 64k;
            collab_send_queue 64k;
        }
    }
EOF
$t->start_nginx;

my $DOC = 'room';

# 20 KB, 50 KB, 20 KB, 50 KB, ...: after a 20 KB delta the queue is under
# half full and the 50 KB one does not fit
my @sizes = map { $_ % 2 ? 20_000 : 50_000 } 1 .. 8;

my $w = $t->ws_session;
my $i = 0;
for my $size (@sizes) {
    $i++;
    $w->send_json({ type => 'delta', doc => $DOC, id => "d$i",
                    data => { n => $i, pad => 'x' x $size } });
    my $a = $w->wait_for(sub { ($_[0]{id} // '') eq "d$i" }, 5);
    is($a && $a->{type}, 'ack', "delta $i of $size bytes stored");
}
$w->close(1000);

my $r = $t->ws_session;
my $s = $t->subscribe($r, $DOC, since => 0);
is($s && $s->{type}, 'subscribed', 'a new reader subscribes with since 0');

my @seq;
while (@seq < @sizes) {
    my $m = $r->wait_for(sub { $_[0]{type} eq 'delta' }, 5) or last;
    push @seq, $m->{seq};
}
Collab::Test::is_list(\@seq, [1 .. @sizes],
    'it catches up with every delta, in order');
$r->close(1000);

$t->done;
done_testing;
