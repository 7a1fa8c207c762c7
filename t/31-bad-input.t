#!/usr/bin/perl

# Bad client input over WebSocket: invalid JSON, unknown types, missing and
# mistyped fields, bad document ids, too many docs.  Every one gets a clear
# `error`/`nack`, and the session (and the others) keep working.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use JSON::PP;
use Collab::Test;
use Collab::WS;

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

my $t = Collab::Test->new(timeout => 90);
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_max_docs 2;
            # every message costs in the budget, invalid ones too
            # (t/94-unmetered.t): room for the ~200 sent here
            collab_rate 1000r/s burst=1000;
        }
    }
EOF
$t->start_nginx;

my $a = $t->ws_session;
my $b = $t->ws_session;
is(($t->subscribe($b, 'ok-doc') // {})->{type}, 'subscribed', 'observer subscribed ok-doc');

sub reply {
    my ($ws) = @_;
    return $ws->wait_for(sub { $_[0]{type} =~ /^(error|nack|ack|subscribed|unsubscribed|ok)$/ }, 3);
}

# send $text, expect an error (or, for deltas, a nack) with $code
sub bad {
    my ($name, $text, %o) = @_;
    my $code = $o{code} // 'invalid';
    $a->send_text(ref $text ? $JSON->encode($text) : $text);
    my $m = reply($a);
    my $want = $o{nack} ? qr/^(nack|error)$/ : qr/^error$/;
    ok($m && $m->{type} =~ $want && ($m->{code} // '') eq $code, "$name => $code")
        or diag 'got ' . ($m ? $JSON->encode($m) : 'nothing');
    if ($o{nack} && $m && $m->{type} eq 'nack' && defined $o{id}) {
        is($m->{id}, $o{id}, "$name: nack carries the op id");
    }
    return $m;
}

my $first = bad('not JSON', 'this is not json');
ok($first && defined $first->{message} && length $first->{message}, 'error has a message');

bad('truncated JSON', '{"type":"subscribe","doc":"x"');
bad('trailing garbage', '{"type":"subscribe","doc":"x"} xyz');
# ASSUMPTION: over WebSocket a frame must be one JSON object; an array is invalid
bad('JSON array', '[{"type":"subscribe","doc":"x"}]');
bad('JSON string', '"subscribe"');
bad('JSON number', '42');
bad('JSON null', 'null');
bad('empty object', '{}');
bad('type not a string', '{"type":42,"doc":"x"}');
bad('unknown type', '{"type":"frobnicate","doc":"x"}');
bad('server-only type from a client', '{"type":"ack","id":"x","doc":"x","seq":1}');

# subscribe
bad('subscribe without doc', { type => 'subscribe' });
bad('subscribe with numeric doc', '{"type":"subscribe","doc":42}');
bad('subscribe with null doc', '{"type":"subscribe","doc":null}');
bad('subscribe with empty doc', { type => 'subscribe', doc => '' });
bad('subscribe with 129-char doc', { type => 'subscribe', doc => 'a' x 129 });
for my $d ('a b', 'a/b', 'a{b}', '{a}', 'a*', "a\nb", 'a,b', "caf\x{e9}", "a\x00b", 'a%20b') {
    (my $show = $d) =~ s/([^\x20-\x7e])/sprintf '\\x{%x}', ord $1/ge;
    bad("subscribe with doc '$show'", { type => 'subscribe', doc => $d });
}
# ASSUMPTION: a mistyped or negative since is invalid rather than ignored
bad('subscribe with since as a string', '{"type":"subscribe","doc":"x","since":"abc"}');
bad('subscribe with negative since', '{"type":"subscribe","doc":"x","since":-1}');

my $long = join '', map { ('A' .. 'Z', 'a' .. 'z', 0 .. 9, '.', '_', ':', '-')[$_ % 66] } 0 .. 127;
my $m = $t->subscribe($a, $long);
is($m && $m->{type}, 'subscribed', '128-char doc with every legal character accepted');
$a->send_json({ type => 'unsubscribe', doc => $long });
$a->drain(0.2);

bad('unsubscribe without doc', { type => 'unsubscribe' });
bad('unsubscribe with bad doc', { type => 'unsubscribe', doc => 'a b' });

# delta
bad('delta without id', { type => 'delta', doc => 'ok-doc', data => 1 }, nack => 1);
bad('delta with numeric id', '{"type":"delta","doc":"ok-doc","id":42,"data":1}', nack => 1);
bad('delta with empty id', { type => 'delta', doc => 'ok-doc', id => '', data => 1 }, nack => 1);
bad('delta with 129-char id', { type => 'delta', doc => 'ok-doc', id => 'i' x 129, data => 1 }, nack => 1);
bad('delta without doc', { type => 'delta', id => 'nodoc', data => 1 }, nack => 1, id => 'nodoc');
bad('delta with bad doc', { type => 'delta', doc => 'no/slash', id => 'baddoc', data => 1 },
    nack => 1, id => 'baddoc');
# ASSUMPTION: data is required (null is fine, absent is not)
bad('delta without data', { type => 'delta', doc => 'ok-doc', id => 'nodata' }, nack => 1, id => 'nodata');
# ASSUMPTION: base, when present, must be a non-negative integer
bad('delta with string base', '{"type":"delta","doc":"ok-doc","id":"sb","base":"x","data":1}',
    nack => 1, id => 'sb');

# state
# ASSUMPTION: state needs an integer seq
bad('state without seq', { type => 'state', doc => 'ok-doc', data => {} });
bad('state with string seq', '{"type":"state","doc":"ok-doc","seq":"4","data":{}}');

# none of the above reached the log
is($t->redis('EXISTS', 'collab:{ok-doc}:log'), 0, 'no invalid delta was stored');

# valid edge cases
$a->send_json({ type => 'delta', doc => 'ok-doc', id => 'i' x 128, data => undef });
$m = reply($a);
is($m && $m->{type}, 'ack', '128-char id and null data accepted');

# deeply nested data: either accepted or refused, but nothing breaks
my $deep = '{"type":"delta","doc":"ok-doc","id":"deep","data":' . ('[' x 5000) . (']' x 5000) . '}';
$a->send_text($deep);
$m = reply($a);
ok($m && $m->{type} =~ /^(ack|nack|error)$/, 'data nested 5000 deep answered: ' . ($m ? $m->{type} : 'nothing'));

# too many docs (collab_max_docs 2)
is(($t->subscribe($a, 'm1') // {})->{type}, 'subscribed', 'doc 1 of 2');
is(($t->subscribe($a, 'm2') // {})->{type}, 'subscribed', 'doc 2 of 2');
$m = $t->subscribe($a, 'm3');
is($m && $m->{type}, 'error', 'doc 3 of 2 => error');
is($m && $m->{code}, 'too_large', '... too_large');
ok($m && (!defined $m->{doc} || $m->{doc} eq 'm3'), '... about m3');

# a burst of garbage
# ASSUMPTION: bad messages are answered one by one; they are not by
# themselves a reason to close the session
$a->drain(0.2);
$a->send_raw(join '', map { Collab::WS::build_frame(opcode => 1, payload => "garbage $_") } 1 .. 100);
my $errors = 0;
while (my $e = $a->wait_for('error', 2)) { last if ++$errors == 100 }
is($errors, 100, '100 garbage messages => 100 errors');
ok($a->is_open, 'session open after all the bad input');

# the session and another session continue
$a->send_json({ type => 'unsubscribe', doc => 'm1' });
$a->drain(0.2);
is(($t->subscribe($a, 'ok-doc') // {})->{type}, 'subscribed', 'bad session subscribes ok-doc');
$b->drain(0.2);
$a->send_json({ type => 'delta', doc => 'ok-doc', id => 'good', data => 'fine' });
$m = $a->wait_for({ type => 'ack', id => 'good' }, 5);
ok($m, 'bad session: delta acked');
$m = $b->wait_for({ type => 'delta', id => 'good' }, 5);
ok($m && $m->{data} eq 'fine', 'other session receives it');

my $c = $t->ws_session;
ok($c, 'new sessions still welcome');
$c->close;
$a->close;
$b->close;

$t->done;
done_testing;
