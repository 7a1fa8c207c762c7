#!/usr/bin/perl

# collab_merge none (issue 10, item 2): the state is the snapshot clients
# upload with `state`; the module keeps the one with the highest seq that is
# not ahead of the log. A subscriber without `since` gets {seq, data} of the
# newest snapshot and then exactly the tail of the log after it.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 2);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_rate off;
            collab_merge none;
        }
    }
EOF
$t->start_nginx;

my $DOC = 'snaps';
my $w = $t->ws_session;

sub delta {
    my ($ws, $id, $data) = @_;
    $ws->send_json({ type => 'delta', doc => $DOC, id => $id, data => $data });
    return $ws->wait_for(sub { ($_[0]{id} // '') eq $id }, 5);
}

sub state {
    my ($ws, $seq, $data) = @_;
    $ws->send_json({ type => 'state', doc => $DOC, seq => $seq, data => $data });
    return $ws->wait_for(sub { $_[0]{type} =~ /^(ok|error)$/ && ($_[0]{doc} // '') eq $DOC }, 5);
}

sub stored { $t->redis('HMGET', "collab:{$DOC}:state", 'seq', 'data') }

for my $i (1 .. 5) {
    is(delta($w, "d$i", { n => $i })->{seq}, $i, "delta $i stored");
}

# a snapshot ahead of the log is refused and changes nothing
my $r = state($w, 6, { upto => 6 });
is($r->{type}, 'error', 'a snapshot ahead of the head is refused');
is($r->{code}, 'invalid', '... with error invalid');
is(stored()->[0], undef, '... and nothing is stored');

$r = state($w, 3, { upto => 3 });
is_deeply([ @$r{qw(type seq)} ], [ 'ok', 3 ], 'a snapshot at 3 is stored');
is_deeply(stored(), [ 3, '{"upto":3}' ], '... as seq and data of the state hash');

# an older one is not kept
$r = state($w, 2, { upto => 2 });
is_deeply([ @$r{qw(type code)} ], [ 'error', 'conflict' ], 'an older snapshot gets error conflict');
is_deeply(stored(), [ 3, '{"upto":3}' ], '... and the newer one stays');

# the same seq replaces it (a client that recomputed it)
$r = state($w, 3, { upto => 3, again => 1 });
is($r->{type}, 'ok', 'a snapshot at the same seq replaces it');
is_deeply(Collab::Test::json_decode(stored()->[1]), { upto => 3, again => 1 },
    '... the new data is stored');

# the head itself is allowed
$r = state($w, 5, { upto => 5 });
is_deeply([ @$r{qw(type seq)} ], [ 'ok', 5 ], 'a snapshot at the head is stored');
is(delta($w, 'd6', { n => 6 })->{seq}, 6, 'delta 6 stored');
is(delta($w, 'd7', { n => 7 })->{seq}, 7, 'delta 7 stored');
$r = state($w, 4, { upto => 4 });
is($r->{code}, 'conflict', 'a snapshot older than the stored one, though behind the head: refused');

# a subscriber without since: newest snapshot + the tail after it
my $x = $t->ws_session;
my $s = $t->subscribe($x, $DOC);
is($s->{type}, 'subscribed', 'a subscriber without since');
is($s->{seq}, 7, '... at the head');
is_deeply($s->{state}, { seq => 5, data => { upto => 5 } }, '... gets the newest snapshot');
my @tail;
while (my $m = $x->wait_for('delta', 3)) {
    push @tail, $m->{seq};
    last if $m->{seq} >= 7;
}
Collab::Test::is_list(\@tail, [6, 7], '... and exactly the tail after it');

# then the live deltas
is(delta($w, 'd8', { n => 8 })->{seq}, 8, 'delta 8 stored');
my $m = $x->wait_for('delta', 5);
is($m && $m->{seq}, 8, '... reaches the subscriber live');

# a resuming subscriber whose since is served from the log gets no state
my $y = $t->ws_session;
my $s2 = $t->subscribe($y, $DOC, since => 6, epoch => $s->{epoch});
ok($s2->{type} eq 'subscribed' && !exists $s2->{state}, 'a resume from 6 gets no state');
is($y->wait_for('delta', 5)->{seq}, 7, '... but the deltas after 6');

# a since of another epoch gets the snapshot again
my $z = $t->ws_session;
$s2 = $t->subscribe($z, $DOC, since => 6, epoch => '0123456789abcdef');
is_deeply($s2->{state}, { seq => 5, data => { upto => 5 } }, 'another epoch: the snapshot');
my @z;
while (my $d = $z->wait_for('delta', 3)) { push @z, $d->{seq}; last if $d->{seq} >= 8 }
Collab::Test::is_list(\@z, [6, 7, 8], '... and the tail after it');

# over POST the same rules
my $p = $t->post('/collab', [ { type => 'state', doc => $DOC, seq => 99, data => 1 },
                              { type => 'state', doc => $DOC, seq => 1, data => 1 } ]);
my @codes = map { $_->{code} // $_->{type} } @{ $p->{json} || [] };
Collab::Test::is_list(\@codes, ['invalid', 'conflict'], 'POST: ahead refused, older not kept');
is(stored()->[0], 5, '... the stored snapshot is still at 5');

$_->close(1000) for $w, $x, $y, $z;
$t->done;
done_testing;
