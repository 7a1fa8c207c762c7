#!/usr/bin/perl

# The Redis function library across module versions (a rolling upgrade):
# loaded only when Redis holds an older one or none, never replacing a newer
# one; a newer one that no longer serves this module's version is refused
# with an error in the log.  Another module version is played by loading a
# library with another version number into Redis by hand.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

my $t = Collab::Test->new(timeout => 120);
$t->start_redis;
$t->write_nginx_conf(<<'EOF2', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s connect_timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_ping 30s;
        }
    }
EOF2
$t->start_nginx;

sub ready_count {
    my ($inst) = @_;
    my @l = $t->error_log($inst) =~ /redis command connection ready/g;
    return scalar @l;
}

# drops the command connections of the workers (not this one) and waits
# until each instance has a new one ready
sub reconnect {
    my (@inst) = @_;
    @inst = (undef) unless @inst;
    my %n = map { ($_ // '') => ready_count($_) } @inst;
    $t->redis('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
    return Collab::Test::wait_until(sub {
        !grep { ready_count($_) <= $n{ $_ // '' } } @inst
    }, 10);
}

sub lib_version {
    my ($r, $err) = $t->redis_try('FCALL', 'collab_version', 0);
    return $err if defined $err;
    return join '.', @$r;
}

sub lib_code {
    my $libs = $t->redis('FUNCTION', 'LIST', 'LIBRARYNAME', 'collab_v1', 'WITHCODE');
    for my $lib (@$libs) {
        my %h = @$lib;
        return $h{library_code} if $h{library_name} eq 'collab_v1';
    }
    return undef;
}

sub with_version {
    my ($code, $v, $c) = @_;
    $code =~ s/return \{\d+, \d+(, PUB[^}]*)?\} end/return {$v, $c$1} end/
        or die 'no version in the library';
    return $code;
}

my $n = 0;
my $log0;
sub delta_reply {
    my ($ws) = @_;
    my $id = 'x' . ++$n;
    $ws->send_json({ type => 'delta', doc => 'lib-doc', id => $id, data => $n });
    return $ws->wait_for(sub { $_[0]{type} =~ /^n?ack$/ && $_[0]{id} eq $id }, 5);
}

my $ws = $t->ws_session;
is($t->subscribe($ws, 'lib-doc')->{type}, 'subscribed', 'the module works');
is(lib_version(), '10.1', 'collab_version: {10, 1}');
my $code = lib_code();
ok($code && $code =~ /^#!lua name=collab_v1/, 'the library text from FUNCTION LIST WITHCODE');

# the same version: not loaded again
$t->redis('CONFIG', 'RESETSTAT');
ok(reconnect(), 'the command connection comes back');
my $stats = $t->redis('INFO', 'commandstats');
unlike($stats, qr/cmdstat_function\|load/, 'an equal library is not loaded again');
like($stats, qr/cmdstat_fcall:/, '... its version was asked for');

# a newer library (a newer module loaded it): kept, and served
$t->redis('FUNCTION', 'LOAD', 'REPLACE', with_version($code, 99, 1));
ok(reconnect(), 'reconnected against a newer library');
is(lib_version(), '99.1', 'the newer library is not replaced');
like($t->error_log, qr/keeping the newer Redis function library version 99/, '... notice in the log');
is(delta_reply($ws)->{type}, 'ack', '... and the module works with it');

# a second instance starting against it keeps it too
$t->start_nginx(name => 'b');
ok(Collab::Test::wait_until(sub { ready_count('b') }, 10), 'instance b is ready');
is(lib_version(), '99.1', 'instance b keeps the newer library too');
like($t->error_log('b'), qr/keeping the newer Redis function library version 99/,
    '... and says so');

# older libraries are replaced
$t->redis('FUNCTION', 'LOAD', 'REPLACE', with_version($code, 1, 1));
ok(reconnect(undef, 'b'), 'reconnected against an older library');
is(lib_version(), '10.1', 'an older library is replaced');
(my $pre = $code) =~ s/redis\.register_function\{function_name = 'collab_version'.*//s;
$t->redis('FUNCTION', 'LOAD', 'REPLACE', $pre);
like(lib_version(), qr/not found/i, 'a library from before collab_version');
ok(reconnect(undef, 'b'), 'reconnected against it');
is(lib_version(), '10.1', 'it is replaced');
is(delta_reply($ws)->{type}, 'ack', 'the module works');

# check and load are one step (WATCH collab:library, MULTI, FUNCTION LOAD,
# INCR collab:library, EXEC): another module loading between the check and
# the load aborts it, and the version is asked again.  Played by an older
# library whose collab_version changes that key once.
(my $racy = with_version($code, 1, 1)) =~ s{callback = function\(\) return \{1, 1(, PUB[^\}]*)?\} end,\n  flags = \{'no-writes'\}\}}
    {callback = function() if redis.call('DEL', 'race-once') == 1 then redis.call('INCR', 'collab:library') end return {1, 1$1} end\}}
    or die 'no collab_version to replace';
$t->redis('FUNCTION', 'LOAD', 'REPLACE', $racy);
$t->redis('SET', 'race-once', 1);
my $loads = $t->redis('GET', 'collab:library') // 0;
$log0 = length($t->error_log) + length($t->error_log('b'));
ok(reconnect(undef, 'b'), 'reconnected against a library that changes while it is checked');
is($t->redis('EXISTS', 'race-once'), 0, '... the change happened');
like($t->error_log . $t->error_log('b'), qr/library changed while loading it, checking its version again/,
    '... the load was aborted and the version asked again');
is(lib_version(), '10.1', '... and the library is loaded');
ok($t->redis('GET', 'collab:library') > $loads, 'every load changes collab:library');
is(delta_reply($ws)->{type}, 'ack', 'the module works');

# a newer library that does not serve this module's version: refused
$t->redis('FUNCTION', 'LOAD', 'REPLACE', with_version($code, 99, 50));
$log0 = length $t->error_log;
$t->redis('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
ok(Collab::Test::wait_until(sub { substr($t->error_log, $log0) =~ /upgrade the module/ }, 5),
    'an incompatible newer library: error in the log');
like(substr($t->error_log, $log0), qr/version 99, which serves modules of version 50 and newer; this module is version 10/,
    '... naming both versions');
is(lib_version(), '99.50', '... and it is not replaced');
my $r = delta_reply($ws);
is($r && $r->{code}, 'unavailable', 'a delta meanwhile: nack unavailable');

# once Redis has a library it can use, the module comes back by itself
$t->redis('FUNCTION', 'LOAD', 'REPLACE', $code);
ok(Collab::Test::wait_until(sub { my $m = delta_reply($ws); $m && $m->{type} eq 'ack' }, 15, 0.2),
    'a usable library again: deltas are accepted again');

$t->done;
done_testing();
