#!/usr/bin/perl

# Cross-site WebSocket hijacking: collab_allow_origin with cookie
# authentication.  A browser sends the collab_token cookie with a WebSocket
# opened by any page, so the Origin check is what stops a foreign page from
# acting as the user.  Complements the origin table of t/20-ws-handshake.t:
# here the check runs before authentication, on every transport, with
# wildcards, ports, case and "null".

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 90);
$t->jwt_keys;
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_default_role editor;
        location = /collab {
            collab;
            collab_auth jwt;
            collab_doc $arg_doc;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
            collab_jwt_cookie collab_token;
            collab_allow_origin https://app.example.com *.example.org;
        }
        location = /collab-nocookie {
            collab;
            collab_auth jwt;
            collab_doc $arg_doc;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
        location = /collab-any {
            collab;
            collab_auth jwt;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
            collab_allow_origin *;
        }
    }
EOF
$t->start_nginx;

my $tok = $t->jwt(claims => { sub => 'victim', exp => time + 600 });
my $cookie = "Cookie: collab_token=$tok";

sub ws_with {
    my ($origin, %o) = @_;
    return $t->ws(path => $o{path} // '/collab', headers => $o{headers} // [$cookie],
        defined $origin ? (origin => $origin) : ());
}

# the hijacking attempt: the victim's cookie, a foreign page
my $ws = ws_with('https://evil.example.net');
is($ws->status, 403, 'valid session cookie from a foreign Origin: 403');
$ws->drop;
$ws = ws_with('https://app.example.com');
is($ws->status, 101, 'the same cookie from the application\'s Origin: 101');
my $w = $ws->wait_for('welcome', 3);
is($w && $w->{user}, 'victim', '... authenticated');
$ws->close;
$ws = ws_with(undef);
is($ws->status, 101, 'no Origin (not a browser): allowed');
$ws->drop;

# before authentication: a foreign Origin learns nothing about the token
$ws = ws_with('https://evil.example.net', headers => ['Cookie: collab_token=garbage']);
is($ws->status, 403, 'foreign Origin with a bad token: 403, not 401');
$ws->drop;
$ws = ws_with('https://evil.example.net', headers => []);
is($ws->status, 403, 'foreign Origin without a token: 403');
$ws->drop;

# every transport
my $sse = $t->sse(path => '/collab?doc=o1', headers => [$cookie, 'Origin: https://evil.example.net']);
is($sse->status, 403, 'SSE from a foreign Origin: 403');
$sse = $t->sse(path => '/collab?doc=o1', headers => [$cookie, 'Origin: https://app.example.com']);
is($sse->status, 200, 'SSE from the application: 200');
$sse->close;
my $r = $t->post('/collab', [{ type => 'delta', doc => 'o1', id => 'x', data => 1 }],
    headers => [$cookie, 'Origin: https://evil.example.net']);
is($r->{status}, 403, 'POST from a foreign Origin: 403');
is($t->log_len('o1'), 0, '... nothing stored');
$r = $t->post('/collab', [{ type => 'delta', doc => 'o1', id => 'y', data => 1 }],
    headers => [$cookie, 'Origin: https://a.example.org']);
is($r->{status}, 200, 'POST from an allowed wildcard Origin: 200');

# the matching rules
my %cases = (
    'HTTPS://APP.EXAMPLE.COM' => 101,              # ASSUMPTION: case-insensitive
    'https://app.example.com:8443' => 403,         # another port is another origin
    'https://app.example.com.evil.net' => 403,
    'https://xapp.example.com' => 403,
    'null' => 403,                                 # sandboxed frames, file:
    'https://example.org' => 403,
    'https://deep.sub.example.org' => 101,
    'http://x.example.org' => 101,                 # ASSUMPTION: a wildcard takes any scheme
    'https://x.example.org:8443' => 403,           # ASSUMPTION: ... but no port
    'https://x.example.org.evil.net' => 403,
    'https://xexample.org' => 403,
    '' => 101,                                     # an empty Origin counts as none
);
for my $o (sort keys %cases) {
    $ws = ws_with($o);
    is($ws->status, $cases{$o}, "Origin '$o' => $cases{$o}");
    $ws->drop;
}

# "*" takes no cookie: a Bearer token is what a foreign page cannot send
my $bearer = ["Authorization: Bearer $tok"];
$ws = ws_with('https://anything.invalid', path => '/collab-any', headers => $bearer);
is($ws->status, 101, 'collab_allow_origin *: any Origin');
$ws->drop;
$ws = ws_with('null', path => '/collab-any', headers => $bearer);
is($ws->status, 101, 'collab_allow_origin *: even null');
$ws->drop;

# cookies are opt-in: without collab_jwt_cookie the cookie is no token
$ws = ws_with('https://evil.example.net', path => '/collab-nocookie');
is($ws->status, 101, 'no collab_jwt_cookie, no allowlist: the handshake succeeds');
ok(!$ws->wait_for('welcome', 0.5), '... but the cookie authenticates nobody');
$ws->drop;
$sse = $t->sse(path => '/collab-nocookie?doc=o1',
    headers => [$cookie, 'Origin: https://evil.example.net']);
is($sse->status, 401, 'SSE with only a cookie and no collab_jwt_cookie: 401');
$r = $t->post('/collab-nocookie', [{ type => 'delta', doc => 'o2', id => 'z', data => 1 }],
    headers => [$cookie, 'Origin: https://evil.example.net']);
is($r->{json} && $r->{json}[0]{code}, 'unauthorized',
    'POST with only a cookie and no collab_jwt_cookie: unauthorized');
is($t->log_len('o2'), 0, '... nothing stored');

# configuration
for my $bad ('app.example.com', '*example.org', '*.', 'https//x') {
    my ($rc, $out) = $t->check_nginx_conf(<<"EOF");
    collab_redis 127.0.0.1:6379;
    server { listen 127.0.0.1:%%PORT%%; location = /c { collab; collab_allow_origin $bad; } }
EOF
    isnt($rc, 0, "collab_allow_origin $bad is refused");
    like($out, qr/invalid origin/, '... "invalid origin"') or diag $out;
}

# a cookie token needs an Origin allowlist (cross-site WebSocket hijacking)
my $key = "%%TESTDIR%%/keys/hs256.key";
my %cookie_conf = (
    'cookie without collab_allow_origin' =>
        ["collab; collab_auth jwt; collab_jwt_key hs256 file=$key; collab_jwt_cookie sess;", 1],
    'cookie inherited from the server level' =>
        ["collab; collab_auth jwt; collab_jwt_key hs256 file=$key;", 1,
         'collab_jwt_cookie sess;'],
    'cookie with collab_allow_origin *' =>
        ["collab; collab_auth jwt; collab_jwt_key hs256 file=$key; collab_jwt_cookie sess; "
         . 'collab_allow_origin https://a.example.com *;', 1],
    'cookie on an admin location without an allowlist' =>
        ["collab_admin; collab_auth jwt; collab_jwt_key hs256 file=$key; "
         . 'collab_jwt_cookie sess;', 1],
    'cookie with an allowlist' =>
        ["collab; collab_auth jwt; collab_jwt_key hs256 file=$key; collab_jwt_cookie sess; "
         . 'collab_allow_origin https://a.example.com *.example.org;', 0],
    'collab_jwt_cookie off without an allowlist' =>
        ["collab; collab_auth jwt; collab_jwt_key hs256 file=$key; collab_jwt_cookie off;", 0],
    'no collab_jwt_cookie, no allowlist' =>
        ["collab; collab_auth jwt; collab_jwt_key hs256 file=$key;", 0],
    'a cookie name on a location without jwt' =>
        ['collab; collab_jwt_cookie sess;', 0],
);
for my $name (sort keys %cookie_conf) {
    my ($loc, $bad, $srv) = @{ $cookie_conf{$name} };
    $srv //= '';
    my ($rc, $out) = $t->check_nginx_conf(<<"EOF");
    collab_redis 127.0.0.1:6379;
    server { listen 127.0.0.1:%%PORT%%; $srv location = /c { $loc } }
EOF
    if ($bad) {
        isnt($rc, 0, "nginx -t refuses: $name");
        like($out, qr/\[emerg\].*collab_jwt_cookie.*collab_allow_origin/,
            "$name: the message names the fix") or diag $out;
    } else {
        is($rc, 0, "nginx -t accepts: $name") or diag $out;
    }
}

$t->done;
done_testing();
