#!/usr/bin/perl

# collab_merge json-merge, the cost of one append: the merge runs inside
# Redis, so its CPU time is every client's latency.  A 60 KB state that a
# client crafts (63 levels of objects over a deep array, a string holding a
# bracket so that the fast path is off) and a patch down to the bottom
# must not make the merge rescan the state at every level: the time is
# measured by Redis itself (SLOWLOG) and must stay near the cost of one pass.
# Also exact round trips of the values the text merge has to get right.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 200);
$t->start_redis;
$t->write_nginx_conf(<<'EOF2', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_merge json-merge;
        }
    }
EOF2
$t->start_nginx;

sub post_delta {
    my ($doc, $id, $data) = @_;
    my $r = $t->post('/collab', "[{\"type\":\"delta\",\"doc\":\"$doc\",\"id\":\"$id\",\"data\":$data}]");
    return $r->{json} ? $r->{json}[0] : { type => "HTTP $r->{status}" };
}

sub state_of { $t->redis('HGET', "collab:{$_[0]}:state", 'data') }

# the delta's reply and the microseconds Redis spent in collab_append
sub timed_delta {
    my ($doc, $id, $data) = @_;
    $t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', '0');
    $t->redis('SLOWLOG', 'RESET');
    my $r = post_delta($doc, $id, $data);
    my $log = $t->redis('SLOWLOG', 'GET', '128');
    $t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', '10000');
    my ($us) = map { $_->[2] }
        grep { lc $_->[3][0] eq 'fcall' && $_->[3][1] eq 'collab_append' } @$log;
    return ($r, $us // -1);
}

# --- worst cases of a 60 KB state, with the 64 KB messages of the defaults
# One pass is a few ms; a rescan per level was 400-900 ms, a hundred times a
# flat patch of the same size.  The limit is 100 ms, or 20 flat patches
# when the machine is so busy that a flat patch itself takes longer than 5 ms
# (SLOWLOG measures wall time, which a busy machine stretches).
my $D = 63;
my $inner = '[' . join(',', ('[]') x 19000) . ']';
my @flat = sort { $a <=> $b }
    map { (timed_delta("flat$_", 'f1', '{"x":' . $inner . '}'))[1] } 1 .. 3;
my $LIMIT_US = 20 * $flat[1] > 100_000 ? 20 * $flat[1] : 100_000;
diag "a flat 60 KB patch: @flat us; limit $LIMIT_US us";
for my $case (['deep', '"s":"[",'], ['deep-plain', '']) {
    my ($doc, $pre) = @$case;
    my $p1 = '{' . $pre . ('"a":{' x $D) . '"x":' . $inner . ('}' x $D) . '}';
    my ($r, $us) = timed_delta($doc, 'i1', $p1);
    is($r->{type}, 'ack', "$doc: a 60 KB patch of $D levels acked");
    ok($us >= 0 && $us < $LIMIT_US, "$doc: first patch merged in ${us} us");
    my $p2 = ('{"a":' x $D) . '{"y":1}' . ('}' x $D);
    ($r, $us) = timed_delta($doc, 'i2', $p2);
    is($r->{type}, 'ack', "$doc: a patch to the bottom acked");
    ok($us >= 0 && $us < $LIMIT_US, "$doc: a patch to the bottom of the state in ${us} us");
    (my $want = $p1) =~ s/"x":\Q$inner\E/"x":$inner,"y":1/;
    ok(state_of($doc) eq $want, "$doc: merged at the bottom, the rest as it was");
}

# many members, each patch touching many of them
{
    my $p1 = '{' . join(',', map { "\"k$_\":{\"v\":$_}" } 1 .. 2500) . '}';
    my ($r, $us) = timed_delta('wide', 'w1', $p1);
    is($r->{type}, 'ack', 'wide: 2500 members acked');
    my $p2 = '{' . join(',', map { "\"k$_\":{\"w\":\"[\"}" } grep { $_ % 2 } 1 .. 2500) . '}';
    ($r, $us) = timed_delta('wide', 'w2', $p2);
    is($r->{type}, 'ack', 'wide: a patch of 1250 members acked');
    ok($us >= 0 && $us < $LIMIT_US, "wide: merged in ${us} us");
}

# keys and strings made of escapes
{
    my $esc = '\\"\\\\\\n\\u00e9' x 600;
    my $p1 = '{' . join(',', map { "\"$esc$_\":\"$esc\"" } 1 .. 4) . '}';
    my ($r, $us) = timed_delta('esc', 'e1', $p1);
    is($r->{type}, 'ack', 'escapes: acked');
    ($r, $us) = timed_delta('esc', 'e2', "{\"${esc}1\":null,\"${esc}3\":{\"x\":[\"]\"]}}");
    is($r->{type}, 'ack', 'escapes: a patch by escaped keys acked');
    ok($us >= 0 && $us < $LIMIT_US, "escapes: merged in ${us} us");
    ok(state_of('esc') eq
       "{\"${esc}2\":\"$esc\",\"${esc}3\":{\"x\":[\"]\"]},\"${esc}4\":\"$esc\"}",
       'escapes: the members by their escaped names');
}

# --- exact round trips
{
    my @cases = (
        # [patch, patch, ..., state]
        # (nginx compacts white space and refuses duplicate keys and \u0000)
        ['{"k\\"q":1,"b\\\\":{"c":2}}', '{"k\\u0022q":3,"b\\u005c":{"d":[ 1 , {"e" : null} ]}}',
         '{"k\\"q":3,"b\\\\":{"c":2,"d":[1,{"e":null}]}}'],
        ['{ "a" : { "b" : 1 } , "c" :[ ] }', '{"a" :{ "d" :-0 }}', '{"a":{"b":1,"d":-0},"c":[]}'],
        ['{"a":{"x":{"y":[]}}}', '{"a":{"x":{"y":{"z":1}}}}', '{"a":{"x":{"y":{"z":1}}}}'],
        ['{"a":{"\\/":1,"b":2}}', '{"a":{"/":3}}', '{"a":{"\\/":3,"b":2}}'],
        ['{"a":{"b":{}}}', '{"a":{"b":{"c":null}}}', '{"a":{"b":{}}}'],
        ['{"a":[{"b":1}]}', '{"a":{"b":2}}', '{"a":{"b":2}}'],
        ['{"a":"}{\\"]["}', '{"b":"\\\\"}', '{"a":"}{\\"][","b":"\\\\"}'],
        ['{"n":123456789012345678901234567890,"e":1E308,"m":-1.5e-300}',
         '{"n":123456789012345678901234567890,"e":1E308,"m":-1.5e-300}'],
    );
    my $n = 0;
    for my $c (@cases) {
        my @p = @$c;
        my $want = pop @p;
        my $doc = 'rt' . ++$n;
        my @r = map { post_delta($doc, "r$_", $p[$_]) } 0 .. $#p;
        is(join(',', map { $_->{type} } @r), join(',', ('ack') x @p), "round trip $n: acked");
        is(state_of($doc), $want, "round trip $n: $want");
    }
}

$t->done;
done_testing;
