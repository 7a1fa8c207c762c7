#!/usr/bin/perl

# Tokens and client strings in the logs (issue 9, items 5 and 8).
#
# An access_token argument is masked before any phase of a collab or admin
# location can log it: a request refused by deny, auth_request, limit_req or
# a location-level return shows access_token=xxx in $request, $args and
# $request_uri and in the error log's "request:" text, and the module still
# authenticates with the real token.  Client-controlled strings (a token's
# sub, documents, Redis error texts) are escaped in the module's log lines:
# a sub with a newline forges no log line.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

my $t = Collab::Test->new(timeout => 90);
$t->jwt_keys;
$t->start_redis;

my $D = $t->testdir;
open my $fh, '>', "$D/admin.key" or die;
print $fh "0123456789abcdef0123456789abcdef\n";
close $fh;

$t->write_nginx_conf(<<'EOF');
    log_format leak '$request | $args | $request_uri | $arg_access_token';
    limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        error_log %%TESTDIR%%/info.log info;
        access_log %%TESTDIR%%/leak.log leak;
        collab_auth jwt;
        collab_default_role editor;
        collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;

        location = /collab {
            collab;
        }
        location = /collab-deny {
            collab;
            deny all;
        }
        location = /collab-ar {
            collab;
            auth_request /refuse;
        }
        location = /refuse {
            internal;
            return 403;
        }
        location = /collab-lr {
            collab;
            limit_req zone=one nodelay;
        }
        location = /collab-return {
            collab;
            return 418;
        }
        location = /collab-view {
            collab;
            collab_default_role viewer;
        }
        location = /acl-deny {
            collab_admin;
            collab_admin_key file=%%TESTDIR%%/admin.key;
            deny all;
        }
        location = /acl {
            collab_admin;
            collab_admin_key file=%%TESTDIR%%/admin.key;
        }
        location = /plain {
            return 200 "$args\n";
        }
    }
EOF
$t->start_nginx;

my @SIGS;
sub token {
    my ($user) = @_;
    my $x = $t->jwt(claims => { sub => $user, exp => time + 600 });
    push @SIGS, (split /\./, $x)[2];
    return $x;
}

sub leak_lines { return grep { length } split /\n/, Collab::Test::_slurp("$D/leak.log") }

sub wait_leak_line {
    my ($path) = @_;
    my $line;
    Collab::Test::wait_until(sub {
        ($line) = grep { index($_, "GET $path") == 0 } leak_lines();
        return defined $line;
    }, 5);
    return $line // '';
}

# --- refused before the content handler

my %refused = (
    '/collab-deny' => 403,
    '/collab-ar' => 403,
    '/collab-return' => 418,
    '/acl-deny' => 403,
);
for my $loc (sort keys %refused) {
    my $tok = token("u$loc");
    my $r = $t->http(path => "$loc?doc=d1&access_token=$tok&x=1");
    is($r->{status}, $refused{$loc}, "$loc: refused with $refused{$loc}");
    my $line = wait_leak_line("$loc?");
    is($line, "GET $loc?doc=d1&access_token=xxx&x=1 HTTP/1.1 | doc=d1&access_token=xxx&x=1 | "
        . "$loc?doc=d1&access_token=xxx&x=1 | xxx",
        "$loc: \$request, \$args, \$request_uri and \$arg_access_token are masked");
}

# limit_req: the first request passes (and fails to authenticate: not a
# WebSocket), the second is refused by limit_req before the content handler
{
    my $tok = token('u-lr');
    my $r1 = $t->http(path => "/collab-lr?access_token=$tok");
    my $r2 = $t->http(path => "/collab-lr?access_token=$tok&n=2");
    is($r2->{status}, 503, 'limit_req refuses the second request');
    my $line = wait_leak_line('/collab-lr?access_token=xxx&n=2');
    like($line, qr/^GET \/collab-lr\?access_token=xxx&n=2 HTTP/, 'limit_req: masked in the log');
}

# the error log's "request:" text of deny and limit_req
{
    my @l;
    Collab::Test::wait_until(sub {
        @l = grep { /access forbidden by rule|limiting requests/ }
             split /\n/, Collab::Test::_slurp("$D/info.log");
        return @l >= 3;
    }, 5);
    ok(@l >= 3, 'deny and limit_req logged their refusals') or diag scalar @l;
    ok(!grep({ !/request: "GET [^"]*access_token=xxx/ } @l),
        '... with access_token=xxx in the "request:" text') or diag join "\n", @l;
}

# the module still authenticates with the real token; the log shows xxx
{
    my $tok = token('real-user');
    my $ws = $t->ws(path => "/collab?access_token=$tok&z=1");
    my $w = $ws->ok && $ws->wait_for('welcome', 3);
    is($w && $w->{user}, 'real-user', 'the masked argument still authenticates');
    $ws->close(1000);
    my $line = wait_leak_line('/collab?access_token=xxx&z=1');
    like($line, qr/^GET \/collab\?access_token=xxx&z=1 HTTP\/1.1 \| access_token=xxx&z=1 \| /,
        'the session\'s access log line is masked');
}

# another location of the same server is left alone
{
    my $r = $t->http(path => '/plain?access_token=keepme');
    like($r->{body} // '', qr/^access_token=keepme$/m, 'locations without collab keep their args');
}

# --- log injection through the token's sub

{
    my $sub = "evil\nFORGED-LINE \"q\" \\ \x{e9}";
    my $x = $t->jwt(claims => { sub => $sub, exp => time + 600 });
    my $ws = $t->ws(path => '/collab-view', headers => ["Authorization: Bearer $x"]);
    my $w = $ws->ok && $ws->wait_for('welcome', 3);
    is($w && $w->{user}, $sub, 'a sub with a newline, quotes and UTF-8 is the user');
    my $s = $t->subscribe($ws, 'inj');
    is($s && $s->{type}, 'subscribed', '... subscribed as a viewer');
    $ws->send_json({ type => 'delta', doc => 'inj', id => 'i1', data => 1 });
    my $n = $ws->wait_for(sub { ($_[0]{id} // '') eq 'i1' }, 3);
    is($n && $n->{code}, 'forbidden', 'a viewer\'s delta is refused (and logged)');
    $ws->close(1000);

    my $line;
    Collab::Test::wait_until(sub {
        ($line) = grep { /collab: .*denied/ } split /\n/, Collab::Test::_slurp("$D/info.log");
        return defined $line;
    }, 5);
    like($line // '', qr/collab: "evil\\x0AFORGED-LINE \\x22q\\x22 \\x5C \\xC3\\xA9" denied/,
        'the denial names the user escaped');
    my @forged = grep { /^FORGED-LINE/ } split /\n/, $t->error_log
        . Collab::Test::_slurp("$D/info.log");
    ok(!@forged, 'no forged log line') or diag join "\n", @forged;
}

# a long sub of control bytes is cut to the bounded buffer
{
    my $x = $t->jwt(claims => { sub => "\x01" x 250, exp => time + 600 });
    my $ws = $t->ws_session(path => '/collab-view', headers => ["Authorization: Bearer $x"]);
    $t->subscribe($ws, 'inj2');
    $ws->send_json({ type => 'delta', doc => 'inj2', id => 'i2', data => 1 });
    $ws->wait_for(sub { ($_[0]{id} // '') eq 'i2' }, 3);
    $ws->close(1000);
    my $line;
    Collab::Test::wait_until(sub {
        ($line) = grep { /denied delta on "inj2"/ } split /\n/, Collab::Test::_slurp("$D/info.log");
        return defined $line;
    }, 5);
    like($line // '', qr/collab: "(\\x01){127}\.\.\." denied delta on "inj2"/,
        'a sub of 250 control bytes is logged as 127 escapes and "..."');
}

# --- document ids cannot carry control bytes into a log line

{
    my $ws = $t->ws_session(path => '/collab', headers => ['Authorization: Bearer ' . token('d')]);
    my $e = $t->subscribe($ws, "a\nFORGED-DOC");
    is($e && $e->{type}, 'error', 'a document id with a newline is refused');
    is($e && $e->{code}, 'invalid', '... as invalid');
    $ws->close(1000);
    my $r = $t->http(path => '/collab?doc=a%0AFORGED-DOC', headers => ['Accept: text/event-stream',
        'Authorization: Bearer ' . token('d2')]);
    is($r->{status}, 400, 'an SSE document id with a newline: 400');
    my @forged = grep { /^FORGED-DOC/ } split /\n/, $t->error_log
        . Collab::Test::_slurp("$D/info.log");
    ok(!@forged, 'no forged log line from a document id') or diag join "\n", @forged;
}

# --- no token anywhere in the info log or the access log

{
    my $all = Collab::Test::_slurp("$D/info.log") . Collab::Test::_slurp("$D/leak.log")
        . Collab::Test::_slurp("$D/access.log");
    my @l = grep { my $s = $_; grep { index($s, $_) >= 0 } @SIGS } split /\n/, $all;
    ok(!@l, 'no token signature in info.log, leak.log or access.log') or diag join "\n", @l;
}

$t->done;
done_testing();
