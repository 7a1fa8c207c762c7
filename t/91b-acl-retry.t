#!/usr/bin/perl

# ACL reloads that meet a Redis in trouble:
#   - a reload that revokes the last local member of a document while the
#     worker's subscriber connection is down (the document must not be freed
#     under the reload's feet: run under `make test-asan`);
#   - a reload whose FCALL fails (command connection dropped): it is retried
#     until it succeeds, the revoked session gets no delta meanwhile and is
#     revoked once Redis is back; the sessions still allowed miss nothing.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

my $t = Collab::Test->new(timeout => 120);
$t->start_redis(args => ['--enable-debug-command', 'yes']);
$t->write_nginx_conf(<<'EOF2', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s connect_timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_auth variable;
            collab_user $http_x_user;
            collab_default_role none;
            collab_ping 30s;
        }
    }
EOF2
$t->start_nginx;
$t->start_nginx(name => 'b');

my $J = Collab::Test->can('json_encode');

sub sess {
    my ($user, %o) = @_;
    return $t->ws_session(headers => ["X-User: $user"], %o);
}
sub set_acl { $t->redis('SET', "collab:{$_[0]}:acl", $J->($_[1])) }
sub announce { $t->redis('PUBLISH', "collab:{$_[0]}", '{"type":"acl"}') }

# several commands in one write on a connection of its own: Redis runs them
# back to back, with nothing of another client in between
sub pipeline {
    my @cmds = @_;
    my $s = Collab::HTTP::connect_socket(port => $t->redis_port, timeout => 2)
        or die "redis connect: $!";
    my $c = { sock => $s, buf => '' };
    Collab::HTTP::write_all($s, join('', map { Collab::Test::_resp_encode(@$_) } @cmds), 5)
        or die "redis write";
    my @r = map { Collab::Test::_resp_read($c, time + 5) } @cmds;
    close $s;
    return @r;
}

sub clients { map { { map { split /=/, $_, 2 } split / / } } split /\r?\n/, $t->redis('CLIENT', 'LIST') }

# a client whose command waits for the end of CLIENT PAUSE
sub paused_fcall {
    return Collab::Test::wait_until(sub {
        grep { ($_->{flags} // '') =~ /b/ && ($_->{cmd} // '') eq 'fcall' } clients()
    }, 3);
}

###########################################################################
# the subscriber connection is down when a reload revokes the last member

{
    my $D = 'race-doc';
    set_acl($D, { version => 1, default => 'none', users => { amy => 'editor', olga => 'owner' } });
    my $amy = sess('amy');
    my $s = $t->subscribe($amy, $D);
    is($s && $s->{type}, 'subscribed', 'amy subscribed (the only member on this instance)');

    set_acl($D, { version => 2, default => 'none', users => { olga => 'owner' } });
    # the worker's FCALL collab_acl waits behind the pause (the PUBLISH
    # reaches the worker after the pause is in place)
    pipeline(['PUBLISH', "collab:{$D}", '{"type":"acl"}'], ['CLIENT', 'PAUSE', 3000, 'WRITE']);
    ok(paused_fcall(), "the reload waits in Redis") or diag explain [clients()];
    # the subscriber connection goes first (the worker sees it go during the
    # sleep, well before its 100 ms reconnect), then the reload is answered
    pipeline(['CLIENT', 'KILL', 'TYPE', 'pubsub'], ['DEBUG', 'SLEEP', '0.05'],
        ['CLIENT', 'UNPAUSE']);
    my $u = $amy->wait_for('unsubscribed', 5);
    is($u && $u->{reason}, 'forbidden', 'amy is revoked although pub/sub was down');
    ok($amy->is_open, '... and her connection stays');

    # the worker is fine: a new member gets the document
    set_acl($D, { version => 3, default => 'none', users => { amy => 'editor' } });
    my $again = Collab::Test::wait_until(sub {
        my $m = $t->subscribe($amy, $D);
        $m && $m->{type} eq 'subscribed' ? $m : undef
    }, 5, 0.2);
    ok($again, 'amy subscribes again once allowed');
}

###########################################################################
# the reload fails: the command connection is dropped while it waits, and
# cannot come back for a while (maxclients); the other instance writes on

{
    my $D = 'retry-doc';
    set_acl($D, { version => 1, default => 'none',
        users => { amy => 'editor', bob => 'editor', carl => 'editor' } });
    my $amy = sess('amy');
    my $bob = sess('bob');
    my $carl = sess('carl', instance => 'b');
    is($t->subscribe($amy, $D)->{type}, 'subscribed', 'amy subscribed');
    is($t->subscribe($bob, $D)->{type}, 'subscribed', 'bob subscribed');

    $carl->send_json({ type => 'delta', doc => $D, id => 'd1', data => 1 });
    ok($carl->wait_for({ type => 'ack', id => 'd1' }, 3), 'carl (instance b) writes d1');
    ok($amy->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'd1' }, 3), 'amy gets d1');
    ok($bob->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'd1' }, 3), 'bob gets d1');

    # a connection of its own for the notice: none can be opened below; once
    # the worker's command connection is dropped, it cannot come back
    my $s = Collab::HTTP::connect_socket(port => $t->redis_port, timeout => 2) or die;
    my $pc = { sock => $s, buf => '' };
    my $nclients = () = clients();
    $t->redis('CONFIG', 'SET', 'maxclients', $nclients - 1);

    set_acl($D, { version => 2, default => 'none', users => { bob => 'editor', carl => 'editor' } });
    my $log0 = length $t->error_log;
    Collab::HTTP::write_all($s, Collab::Test::_resp_encode('PUBLISH', "collab:{$D}", '{"type":"acl"}')
        . Collab::Test::_resp_encode('CLIENT', 'PAUSE', 5000, 'WRITE'), 5) or die;
    Collab::Test::_resp_read($pc, time + 5) for 1 .. 2;
    ok(Collab::Test::wait_until(sub {
        substr($t->error_log, $log0) =~ /command connection .* dropped: command timed out/
    }, 5), 'the reload timed out: the command connection is dropped');
    $t->redis('CLIENT', 'UNPAUSE');

    $carl->send_json({ type => 'delta', doc => $D, id => 'd2', data => 2 });
    ok($carl->wait_for({ type => 'ack', id => 'd2' }, 3), 'carl writes d2 meanwhile');
    ok(!$amy->wait_for(sub { $_[0]{type} =~ /^(delta|unsubscribed)$/ }, 1),
        'amy (revoked, role unknown here) gets no delta while the ACL cannot be loaded');
    ok(!$bob->wait_for(sub { $_[0]{type} eq 'delta' }, 0.3),
        '... nor does bob: nothing is delivered while the roles are not known');
    like($t->error_log, qr/the ACL of "retry-doc" could not be loaded, delivery held/,
        'the failed reload is logged');

    $t->redis('CONFIG', 'SET', 'maxclients', 10000);
    my $u = $amy->wait_for(sub { $_[0]{type} =~ /^(unsubscribed|delta)$/ }, 10);
    is($u && $u->{type}, 'unsubscribed', 'amy is unsubscribed once Redis is back');
    is($u && $u->{reason}, 'forbidden', '... forbidden');
    my $b2 = $bob->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'd2' }, 5);
    is($b2 && $b2->{seq}, 2, 'bob (still allowed) gets d2, seq 2');

    $carl->send_json({ type => 'delta', doc => $D, id => 'd3', data => 3 });
    ok($carl->wait_for({ type => 'ack', id => 'd3' }, 3), 'carl writes d3');
    my $b3 = $bob->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'd3' }, 3);
    is($b3 && $b3->{seq}, 3, 'bob gets d3 live');
    ok(!$amy->wait_for(sub { $_[0]{type} eq 'delta' }, 0.5), 'amy gets nothing more');
    close $s;
}

$t->done;
done_testing();
