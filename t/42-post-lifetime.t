#!/usr/bin/perl

# POST lifetime: the request is finished by the POST transport, never inside
# a Redis reply handler (keep-alive, lingering_close off, HTTP/2), and every
# message of a body gets exactly one reply whatever the path: an "auth" that
# names another user, a token that expires while Redis is slow, messages
# refused before Redis, Redis unavailable.  Run it under `make test-asan`.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Select;
use Collab::Test;
use Collab::HTTP;

my $t = Collab::Test->new(timeout => 120);
$t->jwt_keys;
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%% timeout=10s;
    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT2%% http2;
        collab_ping 30s;
        collab_default_role editor;

        location = /collab {
            collab;
            collab_max_message 1k;
        }
        location = /nolinger {
            collab;
            lingering_close off;
        }
        location = /jwt {
            collab;
            collab_auth jwt;
            collab_jwt_leeway 0;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
    }
EOF
$t->start_nginx;

my $JSON = JSON::PP->new->utf8->canonical;
sub delta { my ($doc, $id, $data) = @_; { type => 'delta', doc => $doc, id => $id, data => $data // 1 } }
sub tok { my ($sub, %c) = @_; $t->jwt(claims => { sub => $sub, exp => int(time) + 300, %c }) }
sub kinds { join ',', map { ($_->{type} // '?') . ($_->{code} ? ":$_->{code}" : '') } @{ $_[0] || [] } }

# one request on an open keep-alive connection; returns {status, json, body}
sub ka_post {
    my ($s, $path, $body, @headers) = @_;
    $body = $JSON->encode($body) if ref $body;
    my $req = "POST $path HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        . join('', map { "$_\r\n" } @headers)
        . "Content-Length: " . length($body) . "\r\n\r\n$body";
    Collab::HTTP::write_all($s, $req, 5) or return { error => 'write' };
    my ($buf, @head) = ('');
    my $deadline = time + 10;
    while (!(@head = Collab::HTTP::parse_head($buf))) {
        Collab::HTTP::read_some($s, \$buf, $deadline - time) or return { error => 'no head', raw => $buf };
    }
    my ($status, undef, $h, undef, $hl) = @head;
    my $rest = substr($buf, $hl);
    while (length $rest < ($h->{'content-length'} // 0)) {
        Collab::HTTP::read_some($s, \$rest, $deadline - time) or return { error => 'short body' };
    }
    return { status => $status, headers => $h, body => $rest,
             json => eval { $JSON->decode($rest) } };
}

###########################################################################
# 1. the ack that finishes the request (heap-use-after-free under ASan
#    before: the reply handler read the session that finalizing freed)

{
    my $s = Collab::HTTP::connect_socket(port => $t->port) or die "connect: $!";
    my $r = ka_post($s, '/collab', delta('life', 'k1'));
    is(kinds($r->{json}), 'ack', 'keep-alive: one delta acked') or diag explain $r;
    $r = ka_post($s, '/collab', { type => 'state', doc => 'life', seq => 1, data => { s => 1 } });
    is(kinds($r->{json}), 'ok', 'same connection: a state stored') or diag explain $r;
    $r = ka_post($s, '/collab', [delta('life', 'k2'), delta('life', 'k3')]);
    is(join(',', map { $_->{seq} // '?' } @{ $r->{json} || [] }), '2,3',
        'same connection: a third request, two acks');
    close $s;

    $r = $t->post('/nolinger', delta('life', 'k4'));
    is(kinds($r->{json}), 'ack', 'lingering_close off: acked');
    $r = $t->post('/collab', delta('life', 'k5'), keepalive => 1);
    is(kinds($r->{json}), 'ack', 'keep-alive, client closes after the reply: acked');
    is($t->log_len('life'), 5, 'all five stored');
}

# HTTP/2 (h2c with prior knowledge): the stream's own write event finishes it
SKIP: {
    my $v = `curl --version 2>/dev/null`;
    skip 'curl without HTTP/2', 3 unless $v =~ /nghttp2/;
    my $url = 'http://127.0.0.1:' . $t->port2 . '/collab';
    my @bodies = ($JSON->encode(delta('life2', 'h1')),
                  $JSON->encode([delta('life2', 'h2'), delta('life2', 'h3')]));
    my @out = map {
        my $b = $_;
        my $o = `curl -s --http2-prior-knowledge -m 10 -H 'Content-Type: application/json' --data-binary '$b' $url`;
        eval { $JSON->decode($o) } || [];
    } @bodies;
    is(kinds($out[0]), 'ack', 'HTTP/2: one delta acked');
    is(kinds($out[1]), 'ack,ack', 'HTTP/2: two acks');
    is($t->log_len('life2'), 3, 'HTTP/2: stored');
}

###########################################################################
# 2. every message gets exactly one reply

# "auth" naming another user: the slot is answered, the request goes on
# under the identity it has (before: no response at all)
{
    my $r = $t->post('/jwt', [{ type => 'auth', token => tok('bob') }, delta('who', 'w1')],
        headers => ['Authorization: Bearer ' . tok('alice')], timeout => 10);
    is($r->{status}, 200, 'auth naming another user: a response') or diag explain $r;
    is(kinds($r->{json}), 'error:unauthorized,ack', '... the auth slot refused, the delta acked');
    my @e = $t->log_entries('who');
    is($e[-1] && $e[-1]{user}, 'alice', '... stored under the identity of the request');

    $r = $t->post('/jwt', [{ type => 'auth', token => tok('carol') },
                           { type => 'auth', token => tok('dave') },
                           { type => 'auth', token => tok('carol') },
                           delta('who', 'w2')], timeout => 10);
    is(kinds($r->{json}), 'ok,error:unauthorized,ok,ack', 'auth, auth of another user, auth again: one reply each');
    @e = $t->log_entries('who');
    is($e[-1] && $e[-1]{user}, 'carol', '... stored under the first identity');

    $r = $t->post('/jwt', [{ type => 'auth', token => 'not.a.token' }, delta('who', 'w3')], timeout => 10);
    is(kinds($r->{json}), 'error:unauthorized,error:unauthorized', 'a bad token, then a delta: two refusals');
}

# a token that expires while Redis is slow: the messages were checked while
# it was valid; the request still gets its replies (before: closed without
# a response once the token expired)
{
    my $exp = int(time) + 2;
    my $s = Collab::HTTP::connect_socket(port => $t->port) or die;
    my $body = $JSON->encode([delta('slow', 's1'), delta('slow', 's2')]);
    $t->freeze_redis;
    Collab::HTTP::write_all($s, "POST /jwt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        . "Authorization: Bearer " . tok('erin', exp => $exp) . "\r\nConnection: close\r\n"
        . "Content-Length: " . length($body) . "\r\n\r\n$body", 5);
    # the event waited for: the token's expiry and the 2 s that a closing
    # session lingers
    Collab::Test::wait_until(sub { time > $exp + 3 }, 10);
    $t->thaw_redis;
    my $buf = '';
    my $deadline = time + 10;
    while (time < $deadline) {
        my $n = Collab::HTTP::read_some($s, \$buf, $deadline - time);
        last unless $n;
    }
    my ($status, undef, undef, undef, $hl) = Collab::HTTP::parse_head($buf);
    is($status, 200, 'token expired while Redis was slow: a response');
    my $j = eval { $JSON->decode(substr($buf, $hl // 0)) } || [];
    is(scalar @$j, 2, '... one reply per message');
    ok(!grep({ ($_->{type} // '') !~ /^(ack|nack)$/ } @$j), '... acks or nacks (' . kinds($j) . ')');
}

# messages refused before they reach Redis, side by side with stored ones
{
    my @body = (
        1, 'x', undef, [],
        { type => 'delta', doc => 'mix', data => 1 },
        { type => 'subscribe', doc => 'mix' },
        { type => 'unsubscribe', doc => 'mix' },
        { type => 'intent', doc => 'mix', data => 1 },
        { type => 'presence', doc => 'mix', data => 1 },
        { type => 'state', doc => 'mix', data => 1 },
        { type => 'auth', token => 'x' },
        delta('bad doc', 'm1'),
        delta('mix', 'm2', 'y' x 2000),
        { type => 'nonsense' },
        delta('mix', 'm3'),
    );
    my $r = $t->post('/collab', \@body, timeout => 10);
    is($r->{status}, 200, 'a batch of refusals: 200');
    my $j = $r->{json} || [];
    is(scalar @$j, scalar @body, 'one reply per message (' . scalar(@body) . ')');
    is(kinds($j), join(',', ('error:invalid') x 4, 'nack:invalid', ('error:invalid') x 6,
        'nack:invalid', 'error:too_large', 'error:invalid', 'ack'), '... each the right refusal')
        or diag kinds($j);
    is($t->log_len('mix'), 1, 'only the valid delta stored');
}

# Redis gone: every delta nacked unavailable, in one response
{
    $t->kill_redis;
    my $r = $t->post('/collab', [map { delta('gone', "g$_") } 1 .. 3], timeout => 10);
    is($r->{status}, 200, 'Redis down: 200');
    is(kinds($r->{json}), join(',', ('nack:unavailable') x 3), '... three nacks unavailable');
    $r = $t->post('/collab', { type => 'state', doc => 'gone', seq => 0, data => 1 }, timeout => 10);
    is(kinds($r->{json}), 'error:unavailable', '... a state: error unavailable');
}

$t->allow_log(qr/Redis|redis|connect\(\) failed|Connection refused/);
$t->done;
done_testing;
