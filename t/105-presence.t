#!/usr/bin/perl

# Presence across two nginx instances on one Redis: set and seen on the
# other instance, the snapshot of a new subscriber (and its bound), the
# size bound, coalescing of a flood (bounded traffic, the latest wins),
# exactly one leave per session for unsubscribe, close, revocation and the
# SIGKILL of an instance (its entries expire); intents cross instances and
# never reach Redis keys.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;

my $t = Collab::Test->new(timeout => 150);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 2);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_presence_ttl 2s;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_ping 30s;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_user $arg_user;
            collab_rate off;
            collab_presence_rate 10;
        }
        location = /small {
            collab;
            collab_doc $arg_doc;
            collab_user $arg_user;
            collab_presence_max 2;
            collab_presence_size 64;
        }
    }
EOF
$t->start_nginx;
$t->start_nginx(name => 'b');

my $J = Collab::Test->can('json_encode');

sub sess {
    my ($user, %o) = @_;
    my $path = ($o{path} // '/collab') . "?user=$user";
    my $ws = $t->ws_session(path => $path, instance => $o{instance});
    return $ws;
}

sub sid { $_[0]{welcome}{session} }

sub is_pres {
    my ($m, $sid, $left) = @_;
    return $m->{type} eq 'presence' && $m->{session} eq $sid
        && ($left ? $m->{left} : !$m->{left});
}

# every leave of $sid among what $ws received so far and within $secs
sub leaves {
    my ($ws, $sid, $secs) = @_;
    return grep { is_pres($_, $sid, 1) } $ws->collect($secs);
}

# --- presence crosses instances; a snapshot for the next subscriber
my ($wa, $wb);
{
    $wa = sess('alice');
    $wb = sess('bob', instance => 'b');
    ok($t->subscribe($wa, 'p1')->{type} eq 'subscribed', 'alice subscribed on a');
    ok($t->subscribe($wb, 'p1')->{type} eq 'subscribed', 'bob subscribed on b');
    my $empty = $wb->wait_for({ type => 'presence_snapshot' }, 5);
    ok($empty && $empty->{count} == 0 && !@{ $empty->{members} },
       'an empty snapshot without members');

    $wa->send_json({ type => 'presence', doc => 'p1', data => { cursor => 1 } });
    my $m = $wb->wait_for(sub { is_pres($_[0], sid($wa)) }, 5);
    ok($m && $m->{user} eq 'alice' && $m->{data}{cursor} == 1 && $m->{doc} eq 'p1',
       'presence of a reaches b');
    $wb->send_json({ type => 'presence', doc => 'p1', data => 'here' });
    $m = $wa->wait_for(sub { is_pres($_[0], sid($wb)) }, 5);
    ok($m && $m->{user} eq 'bob' && $m->{data} eq 'here', 'presence of b reaches a');
    ok(!grep({ is_pres($_, sid($wa)) } $wa->collect(0.3)), 'no echo to the sender');

    my $h = $t->redis('HGETALL', 'collab:{p1}:presence');
    my %h = @$h;
    ok($h{sid($wa)} && $h{sid($wb)}, 'both entries kept in collab:{p1}:presence');
    my $exp = $t->redis('ZRANGE', 'collab:{p1}:presence:exp', 0, -1);
    is(scalar @$exp, 2, 'and their expiry times');
    ok($t->redis('PTTL', 'collab:{p1}:presence') > 0, 'the key expires when nobody refreshes it');

    my $wc = sess('carol', instance => 'b');
    $t->subscribe($wc, 'p1');
    my $snap = $wc->wait_for({ type => 'presence_snapshot' }, 5);
    my %mem = map { $_->{session} => $_ } @{ $snap ? $snap->{members} : [] };
    ok($snap && $snap->{count} == 2 && !$snap->{truncated}
       && $mem{sid($wa)}{data}{cursor} == 1 && $mem{sid($wb)}{data} eq 'here'
       && $mem{sid($wa)}{user} eq 'alice', 'a new subscriber gets the snapshot');
    $wc->close;
}

# --- the snapshot is bounded; so is one session's presence
{
    my @w = map { sess("u$_", path => '/small', instance => $_ % 2 ? 'b' : undef) } 1 .. 3;
    for my $w (@w) {
        $t->subscribe($w, 'small');
        $w->send_json({ type => 'presence', doc => 'small', data => 1 });
    }
    Collab::Test::wait_until(sub { $t->redis('HLEN', 'collab:{small}:presence') == 4 }, 5);
    my $n = sess('viewer', path => '/small');
    $t->subscribe($n, 'small');
    my $snap = $n->wait_for({ type => 'presence_snapshot' }, 5);
    ok($snap && $snap->{count} == 3 && @{ $snap->{members} } == 2 && $snap->{truncated},
       'collab_presence_max: 2 of 3 members, count and truncated');

    $w[0]->send_json({ type => 'presence', doc => 'small', data => 'x' x 65 });
    my $e = $w[0]->wait_for({ type => 'error' }, 5);
    ok($e && $e->{code} eq 'too_large', 'presence over collab_presence_size: too_large');
    $w[0]->send_json({ type => 'presence', doc => 'nope', data => 1 });
    $e = $w[0]->wait_for({ type => 'error' }, 5);
    ok($e && $e->{code} eq 'invalid', 'presence needs a subscription');
    $_->close for @w, $n;
}

# --- a flood is coalesced: bounded, and the latest value wins
{
    $wb->collect(0.2);
    my $t0 = time;
    for my $i (1 .. 500) {
        $wa->send_json({ type => 'presence', doc => 'p1', data => { n => $i } });
    }
    my (@seen, $last);
    while (!$last && time < $t0 + 10) {
        my $m = $wb->recv_json($t0 + 10 - time) or last;
        next unless is_pres($m, sid($wa));
        push @seen, $m;
        $last = $m if $m->{data}{n} == 500;
    }
    my $secs = time - $t0;
    push @seen, grep { is_pres($_, sid($wa)) } $wb->collect(0.5);
    ok($last, 'the last value of the flood arrives');
    is($seen[-1]{data}{n}, 500, 'and nothing older after it');
    my $max = int(10 * $secs) + 2;
    ok(@seen <= $max, sprintf('%d updates seen for 500 sent in %.2fs (at most %d)',
                              scalar @seen, $secs, $max));
    my @n = map { $_->{data}{n} } @seen;
    ok(!grep({ $n[$_] <= $n[$_ - 1] } 1 .. $#n), 'in order, never an older one');
    like($t->redis('HGET', 'collab:{p1}:presence', sid($wa)), qr/"n":500\b/,
         'Redis holds the latest');
}

# --- exactly one leave: unsubscribe, close, revocation
{
    my $u = sess('dave');
    $t->subscribe($u, 'p1');
    $u->send_json({ type => 'presence', doc => 'p1', data => 'd' });
    $wb->wait_for(sub { is_pres($_[0], sid($u)) }, 5);
    $u->send_json({ type => 'unsubscribe', doc => 'p1' });
    my $l = $wb->wait_for(sub { is_pres($_[0], sid($u), 1) }, 5);
    ok($l && $l->{reason} eq 'unsubscribed' && $l->{user} eq 'dave',
       'unsubscribe: leave reaches the other instance');
    $u->close;

    my $c = sess('erin', instance => 'b');
    $t->subscribe($c, 'p1');
    $c->send_json({ type => 'presence', doc => 'p1', data => 'e' });
    $wa->wait_for(sub { is_pres($_[0], sid($c)) }, 5);
    $c->close;
    $l = $wa->wait_for(sub { is_pres($_[0], sid($c), 1) }, 5);
    ok($l && $l->{reason} eq 'closed', 'close: leave');

    my $d = sess('frank', instance => 'b');
    $t->subscribe($d, 'p1');
    $d->send_json({ type => 'presence', doc => 'p1', data => 'f' });
    $wa->wait_for(sub { is_pres($_[0], sid($d)) }, 5);
    $d->drop;
    $l = $wa->wait_for(sub { is_pres($_[0], sid($d), 1) }, 5);
    ok($l && $l->{reason} eq 'closed', 'dropped connection: leave');

    # the waits above took one leave each; what is left must be the other
    # instance's copy only
    my @ra = $wa->collect(1.5);
    my @rb = $wb->collect(0.3);
    my %n;
    for ([a => \@ra], [b => \@rb]) {
        my ($who, $msgs) = @$_;
        for my $m (@$msgs) {
            $n{"$who:$m->{session}"}++ if $m->{type} eq 'presence' && $m->{left};
        }
    }
    my $sa = join ',', map { $n{"a:" . sid($_)} // 0 } $u, $c, $d;
    my $sb = join ',', map { $n{"b:" . sid($_)} // 0 } $u, $c, $d;
    is("$sa/$sb", '1,0,0/0,1,1', 'one leave per session on each instance, none more');
    ok(!$t->redis('HEXISTS', 'collab:{p1}:presence', sid($u))
       && !$t->redis('HEXISTS', 'collab:{p1}:presence', sid($c)), 'their entries are gone');

    # revocation: an ACL without the user
    $t->redis('SET', 'collab:{rv}:acl', $J->({ default => 'none',
        users => { alice => 'editor', bob => 'viewer', gina => 'viewer' } }));
    my $o = sess('alice');
    my $g = sess('gina', instance => 'b');
    $t->subscribe($o, 'rv');
    $t->subscribe($g, 'rv');
    $g->send_json({ type => 'presence', doc => 'rv', data => 'g' });
    ok($o->wait_for(sub { is_pres($_[0], sid($g)) }, 5), 'a viewer may set presence');
    $t->redis('SET', 'collab:{rv}:acl', $J->({ default => 'none',
        users => { alice => 'editor', bob => 'viewer' } }));
    $t->redis('PUBLISH', 'collab:{rv}', '{"type":"acl"}');
    my $un = $g->wait_for({ type => 'unsubscribed' }, 5);
    ok($un && $un->{reason} eq 'forbidden', 'gina lost access');
    $l = $o->wait_for(sub { is_pres($_[0], sid($g), 1) }, 5);
    ok($l && $l->{reason} eq 'revoked', 'revocation: leave');
    is(scalar(leaves($o, sid($g), 1.5)), 0, 'one leave only');
    $o->close;
    $g->close;
}

# --- intents cross instances and are never stored
{
    my $marker = 'intent-marker-' . int(rand(1e9));
    $wa->send_json({ type => 'intent', doc => 'p1', data => { m => $marker } });
    my $m = $wb->wait_for({ type => 'intent' }, 5);
    ok($m && $m->{data}{m} eq $marker && $m->{session} eq sid($wa), 'intent a -> b');
    $wb->send_json({ type => 'intent', doc => 'p1', data => { m => "$marker-b" } });
    $m = $wa->wait_for({ type => 'intent' }, 5);
    ok($m && $m->{data}{m} eq "$marker-b", 'intent b -> a');
    my $found = 0;
    for my $k (@{ $t->redis('KEYS', '*') }) {
        my $type = $t->redis('TYPE', $k);
        my $dump = $type eq 'string' ? $t->redis('GET', $k)
                 : $type eq 'hash'   ? join(' ', @{ $t->redis('HGETALL', $k) })
                 : $type eq 'stream' ? $J->($t->redis('XRANGE', $k, '-', '+'))
                 : $type eq 'zset'   ? join(' ', @{ $t->redis('ZRANGE', $k, 0, -1) })
                 : '';
        $found++ if index($dump // '', $marker) >= 0;
    }
    is($found, 0, 'no Redis key holds an intent');
}

# --- SIGKILL of instance b: its members expire, one leave each
{
    my $o = sess('olga');
    $t->subscribe($o, 'pk');
    my @k = map { sess("k$_", instance => 'b') } 1 .. 2;
    for my $w (@k) {
        $t->subscribe($w, 'pk');
        $w->send_json({ type => 'presence', doc => 'pk', data => 'k' });
        ok($o->wait_for(sub { is_pres($_[0], sid($w)) }, 5), 'member on b seen on a');
    }
    my @pids = $t->nginx_pids('b');
    kill 'KILL', @pids;
    $t->{nginx}{b}{running} = 0;
    my $t0 = time;
    $_->drop for @k, $wb;
    my %left;
    while (2 > grep({ $left{ sid($_) } } @k) && time < $t0 + 10) {
        my $m = $o->wait_for(sub { $_[0]{type} eq 'presence' && $_[0]{left} },
                             $t0 + 10 - time) or last;
        $left{$m->{session}}++;
    }
    my $dt = time - $t0;
    ok((2 == grep { $left{ sid($_) } } @k) && $dt < 2 + 0.7 + 3,
       sprintf('both members of the killed instance left after %.1fs', $dt));
    $left{$_->{session}}++ for grep { $_->{type} eq 'presence' && $_->{left} } $o->collect(2);
    ok(!grep({ $left{ sid($_) } != 1 } @k), 'exactly one leave each')
        or diag explain \%left;
    ok(!$t->redis('HEXISTS', 'collab:{pk}:presence', sid($k[0])), 'entry pruned');
    $o->close;
}

$wa->close;
$t->done;
done_testing();
