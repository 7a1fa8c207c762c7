#!/usr/bin/perl

# HTTP reads: GET ?doc=X&view=state and ?doc=X&view=deltas&since=N, their
# ETag / If-None-Match / Cache-Control, bounded pages with a next cursor, a
# trimmed log (resync), permissions (403, audited), Origin, Redis down (503
# with Retry-After), a plain GET still 400; the same reads over HTTP/2.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;
use Collab::HTTP;

my $t = Collab::Test->new(timeout => 120);
$t->jwt_keys;
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%% timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_rate off;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_allow_origin https://app.example.com;
        }
        location = /slow {
            collab;
            collab_doc $arg_doc;
            collab_rate 1r/s burst=2;
        }
        location = /acl {
            collab;
            collab_doc $arg_doc;
            collab_auth jwt;
            collab_default_role none;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
    }
EOF
$t->start_nginx;

my $J = Collab::Test->can('json_encode');

sub get {
    my ($path, @h) = @_;
    return $t->http(path => $path, headers => \@h);
}

sub delta {
    my ($doc, $id, $data) = @_;
    my $r = $t->post('/collab', { type => 'delta', doc => $doc, id => $id,
                                  data => $data });
    return (($r->{json} || [])->[0] || {})->{seq};
}

# --- state of a document nobody wrote: seq 0, data null
my $r = get('/collab?doc=h1&view=state');
is($r->{status}, 200, 'state of an empty document: 200') or diag explain $r;
like($r->{headers}{'content-type'} // '', qr{^application/json}, 'application/json');
is($r->{json}{seq}, 0, 'seq 0');
ok(exists $r->{json}{data} && !defined $r->{json}{data}, 'data null');
like($r->{json}{epoch} // '', qr/^[0-9a-f]{16}$/, 'epoch');
my $epoch = $r->{json}{epoch};
like($r->{headers}{etag} // '', qr/^"[^"]+"$/, 'ETag');
like($r->{headers}{'cache-control'} // '', qr/private/, 'Cache-Control private');
like($r->{headers}{'cache-control'} // '', qr/no-cache/, 'Cache-Control no-cache');

# --- deltas, then a snapshot
is(delta('h1', "d$_", { n => $_ }), $_, "delta $_ stored") for 1 .. 5;
$r = $t->post('/collab', { type => 'state', doc => 'h1', seq => 3,
                           data => { text => 'abc', list => [] } });
is((($r->{json} || [])->[0] || {})->{type}, 'ok', 'state at seq 3 stored');

$r = get('/collab?doc=h1&view=state');
is($r->{status}, 200, 'state: 200');
is($r->{json}{seq}, 3, 'state seq 3');
is_deeply($r->{json}{data}, { text => 'abc', list => [] }, 'state data as stored');
like($r->{body}, qr/"list":\[\]/, 'an empty array stays an array');
is($r->{json}{epoch}, $epoch, 'same epoch');
my $etag = $r->{headers}{etag};

# --- If-None-Match
$r = get('/collab?doc=h1&view=state', "If-None-Match: $etag");
is($r->{status}, 304, 'matching If-None-Match: 304') or diag explain $r;
is($r->{body}, '', '304 without a body');
is($r->{headers}{etag}, $etag, '304 carries the ETag');
$r = get('/collab?doc=h1&view=state', "If-None-Match: \"x\", W/$etag");
is($r->{status}, 304, 'a list with the weak form matches');
$r = get('/collab?doc=h1&view=state', 'If-None-Match: "other"');
is($r->{status}, 200, 'another ETag: 200');
$r = get('/collab?doc=h1&view=state', 'If-None-Match: *');
is($r->{status}, 304, 'If-None-Match: * matches');

$r = $t->post('/collab', { type => 'state', doc => 'h1', seq => 5, data => { text => 'abcde' } });
$r = get('/collab?doc=h1&view=state', "If-None-Match: $etag");
is($r->{status}, 200, 'a new snapshot: 200 again');
is($r->{json}{seq}, 5, 'state seq 5');
isnt($r->{headers}{etag}, $etag, 'new ETag');

# --- deltas
$r = get('/collab?doc=h1&view=deltas&since=2');
is($r->{status}, 200, 'deltas since 2: 200') or diag explain $r;
is_deeply([map { $_->{seq} } @{ $r->{json}{deltas} || [] }], [3, 4, 5], 'seqs 3..5');
is($r->{json}{deltas}[0]{type}, 'delta', 'entries are delta messages');
is($r->{json}{deltas}[0]{id}, 'd3', 'with their id');
is_deeply($r->{json}{deltas}[0]{data}, { n => 3 }, 'and data');
ok(exists $r->{json}{next} && !defined $r->{json}{next}, 'next null at the head');
is($r->{json}{head}, 5, 'head 5');
is($r->{json}{epoch}, $epoch, 'epoch');
ok(!exists $r->{json}{resync}, 'no resync');
$etag = $r->{headers}{etag};
like($r->{headers}{'cache-control'} // '', qr/no-cache/, 'deltas: Cache-Control');
$r = get('/collab?doc=h1&view=deltas&since=2', "If-None-Match: $etag");
is($r->{status}, 304, 'deltas: matching If-None-Match 304');
delta('h1', 'd6', { n => 6 });
$r = get('/collab?doc=h1&view=deltas&since=2', "If-None-Match: $etag");
is($r->{status}, 200, 'a new delta: 200');
is(scalar @{ $r->{json}{deltas} || [] }, 4, 'four deltas now');

$r = get('/collab?doc=h1&view=deltas&since=6');
is_deeply($r->{json}{deltas}, [], 'since = head: no deltas');
ok(!defined $r->{json}{next}, 'next null');

# --- pages
delta('pg', "p$_", $_) for 1 .. 25;
my (@seen, $since, $pages);
$since = 0;
while (defined $since && ++$pages < 20) {
    $r = get("/collab?doc=pg&view=deltas&since=$since&limit=10");
    last unless $r->{status} == 200;
    push @seen, map { $_->{seq} } @{ $r->{json}{deltas} || [] };
    $since = $r->{json}{next};
}
is($pages, 3, 'three pages of 10');
is_deeply(\@seen, [1 .. 25], 'pages: every delta once, in order');
$r = get('/collab?doc=pg&view=deltas&since=0&limit=1000');
is($r->{status}, 200, 'limit above the maximum: capped');
is(scalar @{ $r->{json}{deltas} || [] }, 25, 'all 25 (under the cap)');
delta('pg', "p$_", 'x' x 4000) for 26 .. 250;
$r = get('/collab?doc=pg&view=deltas&since=0&limit=1000');
cmp_ok(scalar @{ $r->{json}{deltas} || [] }, '<=', 100, 'a page is at most 100 deltas');
is($r->{json}{next}, $r->{json}{deltas}[-1]{seq}, 'next = the last seq of the page');
$r = get('/collab?doc=pg&view=deltas&since=100&limit=100');
cmp_ok(length $r->{body}, '<', 256 * 1024 + 5000, 'a page of 4 KB deltas stays within the byte budget');
cmp_ok(scalar @{ $r->{json}{deltas} || [] }, '<', 100, 'so it holds fewer than 100');

# --- bad arguments
is(get('/collab?doc=h1&view=other')->{status}, 400, 'unknown view: 400');
is(get('/collab?view=state')->{status}, 400, 'no doc: 400');
is(get('/collab?doc=h1&view=deltas&since=x')->{status}, 400, 'bad since: 400');
is(get('/collab?doc=h1&view=deltas&since=1&limit=0')->{status}, 400, 'limit 0: 400');
is(get('/collab?doc=h1')->{status}, 400, 'a plain GET stays 400');

# --- a trimmed log: the snapshot, the deltas after it and resync
$t->redis('XTRIM', 'collab:{h1}:log', 'MINID', '6');
$r = get('/collab?doc=h1&view=deltas&since=1');
is($r->{status}, 200, 'trimmed: 200') or diag explain $r;
is($r->{json}{resync}, 'trimmed', 'resync trimmed');
is($r->{json}{state}{seq}, 5, 'with the snapshot');
is_deeply($r->{json}{state}{data}, { text => 'abcde' }, 'its data');
is_deeply([map { $_->{seq} } @{ $r->{json}{deltas} || [] }], [6], 'and the deltas after it');
$r = get("/collab?doc=h1&view=deltas&since=6&epoch=0123456789abcdef");
is($r->{json}{resync}, 'epoch', 'another epoch: resync epoch');
is($r->{json}{epoch}, $epoch, 'the current epoch');

# --- reads count against the POST limit of the user (here: the address)
my @st = map { get('/slow?doc=h1&view=state')->{status} } 1 .. 4;
is($st[0], 200, 'a read within the POST limit: 200');
$r = get('/slow?doc=h1&view=state');
is($r->{status}, 429, 'over it: 429') or diag "@st";
like($r->{headers}{'retry-after'} // '', qr/^\d+$/, 'with Retry-After');
is($r->{json}{code}, 'rate_limited', 'error rate_limited');
cmp_ok($r->{json}{retry_after_ms} // 0, '>', 0, 'with retry_after_ms');

# --- Origin
is(get('/collab?doc=h1&view=state', 'Origin: https://evil.example')->{status}, 403,
   'Origin not allowed: 403');
is(get('/collab?doc=h1&view=state', 'Origin: https://app.example.com')->{status}, 200,
   'Origin allowed: 200');

# --- permissions
$t->redis('SET', 'collab:{sec}:acl', $J->({ version => 1, default => 'none',
    users => { alice => 'viewer' } }));
my $alice = $t->jwt(claims => { sub => 'alice', exp => time + 600 });
my $bob = $t->jwt(claims => { sub => 'bob', exp => time + 600 });
$r = get('/acl?doc=sec&view=state', "Authorization: Bearer $alice");
is($r->{status}, 200, 'a viewer reads the state');
$r = get('/acl?doc=sec&view=deltas&since=0', "Authorization: Bearer $bob");
is($r->{status}, 403, 'role none: 403');
is($r->{json}{code}, 'forbidden', 'the usual JSON error');
is($r->{json}{type}, 'error', 'of type error');
is(get('/acl?doc=sec&view=state')->{status}, 401, 'no token: 401');
is(get("/acl?doc=sec&view=state&access_token=$alice")->{status}, 200,
   'token as an argument');
Collab::Test::wait_until(sub {
    grep { $_ eq 'denied' } map { my %h = @{ $_->[1] }; $h{event} // '' }
        @{ $t->redis('XRANGE', 'collab:{sec}:audit', '-', '+') }
}, 5);
my @denied = grep { ($_->{event} // '') eq 'denied' }
    map { +{ @{ $_->[1] } } } @{ $t->redis('XRANGE', 'collab:{sec}:audit', '-', '+') };
is($denied[0]{user}, 'bob', 'the denial is audited');

# (over HTTP/2: t/tls/50-http2.t)

# --- HEAD: the headers a GET would have, no body (RFC 9110: every
# general-purpose server supports HEAD); a plain HEAD with no view stays 405
{
    my $g = get('/collab?doc=h1&view=state');
    my $h = $t->http(path => '/collab?doc=h1&view=state', method => 'HEAD');
    is($h->{status}, 200, 'HEAD view=state: 200') or diag explain $h;
    is($h->{headers}{etag}, $g->{headers}{etag}, '... the ETag of the GET');
    is($h->{headers}{'content-length'}, length $g->{body}, '... its Content-Length');
    is($h->{headers}{'cache-control'}, $g->{headers}{'cache-control'}, '... its Cache-Control');
    is($h->{body} // '', '', '... no body');
    $h = $t->http(path => '/collab?doc=h1&view=state', method => 'HEAD',
                  headers => ["If-None-Match: $g->{headers}{etag}"]);
    is($h->{status}, 304, 'HEAD with If-None-Match: 304');
    $h = $t->http(path => '/collab?doc=h1&view=deltas&since=0&limit=1', method => 'HEAD');
    is($h->{status}, 200, 'HEAD view=deltas: 200');
    $h = $t->http(path => '/collab?doc=h1', method => 'HEAD');
    is($h->{status}, 405, 'HEAD without a view: 405');
}

# --- Redis frozen: a client that leaves while its read waits, and one that
# waits for the reply timeout (503)
$t->freeze_redis;
my $gone = Collab::HTTP::connect_socket(port => $t->port);
print $gone "GET /collab?doc=h1&view=state HTTP/1.1\r\nHost: x\r\n\r\n";
$t->idle(0.2);
close $gone;
$r = $t->http(path => '/collab?doc=h1&view=deltas&since=0', timeout => 15);
is($r->{status}, 503, 'no reply within the Redis timeout: 503') or diag explain $r;
like($r->{headers}{'retry-after'} // '', qr/^\d+$/, 'with Retry-After');
$t->thaw_redis;
Collab::Test::wait_until(sub { get('/collab?doc=h1&view=state')->{status} == 200 }, 15);
is(get('/collab?doc=h1&view=state')->{status}, 200, 'Redis thawed: 200');

# --- Redis down: 503 with Retry-After
$t->kill_redis;
Collab::Test::wait_until(sub { get('/collab?doc=h1&view=state')->{status} == 503 }, 10);
$r = get('/collab?doc=h1&view=state');
is($r->{status}, 503, 'Redis down: 503');
like($r->{headers}{'retry-after'} // '', qr/^\d+$/, 'with Retry-After');
is($r->{json}{code}, 'unavailable', 'error unavailable');
$t->restart_redis;
Collab::Test::wait_until(sub { get('/collab?doc=h1&view=state')->{status} == 200 }, 15);
is(get('/collab?doc=h1&view=state')->{status}, 200, 'Redis back: 200');

$t->done;
done_testing;
