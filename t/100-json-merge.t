#!/usr/bin/perl

# collab_merge json-merge: every delta is a JSON Merge Patch (RFC 7396)
# that Redis applies to the document's state in the same step that assigns
# its seq.  The state is text-preserving (empty arrays stay arrays, big
# integers, 0.1, escapes and unicode stay as sent); a subscriber without
# `since` gets {seq, data} consistent with the deltas that follow; a patch
# nested too deep is `nack invalid`, a state over collab_state_max is
# `nack too_large` and changes nothing.  Random concurrent patches through
# two nginx instances, 20 seeds: the state equals a reference merge of the
# stored log, and so does what a subscriber that joined mid-stream built.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use Collab::Test;
use Collab::WS;

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

my $t = Collab::Test->new(timeout => 280);
$t->start_redis;

my $CONF = <<'EOF';
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_merge json-merge;
        }
        location = /small {
            collab;
            collab_merge json-merge;
            collab_state_max 1k;
        }
        location = /none {
            collab;
        }
    }
EOF

# --- configuration
{
    my ($rc, $out) = $t->check_nginx_conf($CONF);
    is($rc, 0, 'nginx -t accepts collab_merge json-merge and collab_state_max') or diag $out;
    for my $bad (['0', 'zero'], ['lots', 'not a size'], ['17m', 'over 16m']) {
        (my $c = $CONF) =~ s/collab_state_max 1k;/collab_state_max $bad->[0];/;
        ($rc, $out) = $t->check_nginx_conf($c);
        ok($rc != 0 && $out =~ /collab_state_max/, "collab_state_max $bad->[0] ($bad->[1]) refused")
            or diag $out;
    }
}

$t->write_nginx_conf($CONF, workers => 2);
$t->start_nginx;
$t->start_nginx(name => 'b');

sub post_raw {
    my ($path, $text, %o) = @_;
    my $r = $t->post($path, $text, %o);
    return $r->{json} ? $r->{json}[0] : undef;
}

sub delta_text {
    my ($doc, $id, $data, %o) = @_;
    my $base = defined $o{base} ? ",\"base\":$o{base}" : '';
    return "[{\"type\":\"delta\",\"doc\":\"$doc\",\"id\":\"$id\"$base,\"data\":$data}]";
}

sub state_of {
    my ($doc) = @_;
    return $t->redis('HGET', "collab:{$doc}:state", 'data');
}

# the raw text of subscribed.state.data
sub subscribed_state {
    my ($ws, $doc) = @_;
    $ws->send_json({ type => 'subscribe', doc => $doc });
    my $deadline = time + 10;
    while (time < $deadline) {
        my $m = $ws->recv_msg(10) or last;
        next if $m->{control};
        next unless $m->{data} =~ /^\{"type":"subscribed"/;
        return ($m->{data} =~ /,"state":\{"seq":(\d+),"data":(.*)\}\}\z/s) ? ($1, $2) : ();
    }
    return ();
}

# --- deltas are merge patches; the state follows
{
    my @r = map { post_raw('/collab', delta_text('m1', "p$_->[0]", $_->[1])) }
        [1, '{"a":1,"b":{"c":[]}}'], [2, '{"b":{"d":"x"}}'], [3, '{"a":null}'];
    is(join(',', map { $_ && $_->{type} eq 'ack' ? $_->{seq} : 'x' } @r), '1,2,3', 'three patches acked');
    is(state_of('m1'), '{"b":{"c":[],"d":"x"}}', 'state is the merge of the three');
    is($t->redis('HGET', 'collab:{m1}:state', 'seq'), '3', 'state seq is the head');
    my @log = $t->log_entries('m1');
    is($log[1]{data}, '{"b":{"d":"x"}}', 'the log keeps the patch as sent');

    my $ws = $t->ws_session;
    my ($seq, $data) = subscribed_state($ws, 'm1');
    is($seq, 3, 'subscribe without since: state at the head');
    is($data, '{"b":{"c":[],"d":"x"}}', 'subscribed.state.data is the merged text');
    $ws->send_text(delta_text('m1', 'p4', '{"b":{"c":null,"e":[[]]}}') =~ s/^\[|\]$//gr);
    my $d = $ws->wait_for({ type => 'delta', seq => 4 }, 5);
    ok($d && ref $d->{data} eq 'HASH' && exists $d->{data}{b}{c} && !defined $d->{data}{b}{c},
       'the delta is relayed as the patch, nulls included');
    is(state_of('m1'), '{"b":{"d":"x","e":[[]]}}', 'null deletes, arrays replace');
    $ws->close;
}

# --- edge values round-trip exactly
{
    my $p1 = '{"arr":[],"obj":{},"nest":{"a":[],"b":{"c":[]}},"big":12345678901234567890123,'
        . '"neg":-0,"f":0.1,"exp":1E+2,"u":"\u00e9","emoji":"\ud83d\ude00",'
        . '"esc":"\" \\\\ \/ \n \t","é":"key","k\u00e9y":"escaped key","brace":"}{][","d":0.10}';
    my $r = post_raw('/collab', delta_text('edge', 'e1', $p1));
    is($r && $r->{type}, 'ack', 'edge patch acked') or diag explain $r;
    is(state_of('edge'), $p1, 'a patch on an empty state is stored as sent');
    my $p2 = '{"nest":{"b":{"d":1}},"k\u00e9y":null,"arr":[{}],"\u00e9":"same key","obj":{"z":{}}}';
    $r = post_raw('/collab', delta_text('edge', 'e2', $p2));
    is($r && $r->{type}, 'ack', 'second edge patch acked');
    my $want = '{"arr":[{}],"obj":{"z":{}},"nest":{"a":[],"b":{"c":[],"d":1}},"big":12345678901234567890123,'
        . '"neg":-0,"f":0.1,"exp":1E+2,"u":"\u00e9","emoji":"\ud83d\ude00",'
        . '"esc":"\" \\\\ \/ \n \t","é":"same key","brace":"}{][","d":0.10}';
    is(state_of('edge'), $want, 'merged text: members kept as sent, \u00e9 and é are one key');
    my $ws = $t->ws_session(instance => 'b');
    my ($seq, $data) = subscribed_state($ws, 'edge');
    is($data, $want, 'subscribed carries the exact text');
    $ws->close;

    $r = post_raw('/collab', delta_text('edge', 'e3', '{"huge":1e400}'));
    ok($r && $r->{code} eq 'invalid', '1e400: refused as invalid') or diag explain $r;
    is($t->log_len('edge'), 2, '... not stored');
    $r = post_raw('/collab', delta_text('edge', 'e4', '[1,{"a":null}]'));
    is($r && $r->{type}, 'ack', 'a non-object patch is acked');
    is(state_of('edge'), '[1,{"a":null}]', '... and replaces the state');
    $r = post_raw('/collab', delta_text('edge', 'e5', '{"a":{"b":null}}'));
    is(state_of('edge'), '{"a":{}}', 'an object patch on a non-object starts from {}');
    $r = post_raw('/collab', delta_text('edge', 'e6', 'null'));
    is(state_of('edge'), 'null', 'null as the patch: the state is null');
    $r = post_raw('/collab', delta_text('edge', 'e7', '"text"'));
    is(state_of('edge'), '"text"', 'a string patch replaces the state');
}

# --- invalid patches
{
    my $deep = ('{"a":' x 70) . '1' . ('}' x 70);
    my $r = post_raw('/collab', delta_text('inv', 'i0', '{"ok":1}'));
    $r = post_raw('/collab', delta_text('inv', 'i1', $deep));
    ok($r && $r->{type} eq 'nack' && $r->{code} eq 'invalid', 'objects nested 70 deep: nack invalid')
        or diag explain $r;
    is($t->log_len('inv'), 1, '... not stored');
    is(state_of('inv'), '{"ok":1}', '... state unchanged');
    my $ok = ('{"a":' x 60) . ('[' x 40) . (']' x 40) . ('}' x 60);
    $r = post_raw('/collab', delta_text('inv', 'i2', $ok));
    is($r && $r->{type}, 'ack', 'objects nested 60 deep (arrays do not count): acked');

    # through the function itself, as an application would call it
    my @keys = map { "collab:{inv}:$_" } qw(state log ops acl audit);
    my $reply = $t->redis('FCALL', 'collab_append', 5, @keys, '0000000000000000', 'app', 'x1',
        '{"a":', '', 0, 'inv', 'collab:{inv}', '', 3, 0, '', 65536);
    is($reply->[0], -4, 'collab_append: unparsable patch replies -4');
    $reply = $t->redis('FCALL', 'collab_append', 5, @keys, '0000000000000000', 'app', 'x2',
        '{"a":1}', '', 0, 'inv', 'collab:{inv}', '', 3, 0, '', 65536);
    is($reply->[0], 1, 'collab_append with MERGE: stored');
    is($t->log_len('inv'), 3, 'only the valid ones stored');
}

# --- too large
{
    my $x = 'x' x 900;
    my $r = post_raw('/small', delta_text('big', 'b1', "{\"x\":\"$x\"}"));
    is($r && $r->{type}, 'ack', 'a state under collab_state_max: acked');
    my $before = state_of('big');
    my $y = 'y' x 200;
    $r = post_raw('/small', delta_text('big', 'b2', "{\"y\":\"$y\"}"));
    ok($r && $r->{type} eq 'nack' && $r->{code} eq 'too_large', 'a state over collab_state_max: nack too_large')
        or diag explain $r;
    is(state_of('big'), $before, '... state unchanged');
    is($t->log_len('big'), 1, '... nothing stored');
    is($t->redis('HGET', 'collab:{big}:state', 'head'), '1', '... head unchanged');
    $r = post_raw('/small', delta_text('big', 'b2', "{\"y\":\"$y\"}"));
    ok($r && $r->{type} eq 'nack' && $r->{code} eq 'too_large', 'a retry of the refused op: still too_large');
    $r = post_raw('/small', delta_text('big', 'b3', "{\"x\":null,\"y\":\"$y\"}"));
    ok($r && $r->{type} eq 'ack' && $r->{seq} == 2, 'a patch that shrinks it: acked as seq 2');
    is(state_of('big'), "{\"y\":\"$y\"}", '... and merged');
    $r = post_raw('/small', delta_text('big2', 'c1', '"' . ('z' x 1100) . '"'));
    ok($r && $r->{type} eq 'nack' && $r->{code} eq 'too_large', 'a first patch over the limit: too_large');
    is($t->log_len('big2'), 0, '... nothing stored');
}

# --- state messages are refused where the server keeps the state
{
    my $r = post_raw('/collab', '{"type":"state","doc":"m1","seq":1,"data":{"a":1}}');
    ok($r && $r->{type} eq 'error' && $r->{code} eq 'invalid', 'state message with json-merge: error invalid')
        or diag explain $r;
    is(state_of('m1'), '{"b":{"d":"x","e":[[]]}}', '... state unchanged');
    $r = post_raw('/none', '{"type":"state","doc":"n1","seq":0,"data":{"a":1}}');
    is($r && $r->{type}, 'ok', 'collab_merge none: state messages stored as before');
    $r = post_raw('/none', delta_text('n1', 'n1', '{"b":1}'));
    is(state_of('n1'), '{"a":1}', 'collab_merge none: deltas do not touch the state');
}

# --- random concurrent patches, two instances, 20 seeds
sub jmerge {
    my ($target, $patch) = @_;
    return $patch unless ref $patch eq 'HASH';
    my %r = ref $target eq 'HASH' ? %$target : ();
    for my $k (keys %$patch) {
        if (!defined $patch->{$k}) {
            delete $r{$k};
        } else {
            $r{$k} = jmerge($r{$k}, $patch->{$k});
        }
    }
    return \%r;
}

my @KEYS = ('a', 'b', 'c', "\x{e9}", 'k"q', 'x{');
sub rvalue {
    my ($depth) = @_;
    my $n = int rand 10;
    return undef if $n == 0;
    return int(rand 1000) - 500 if $n == 1;
    return 'v' . int(rand 100) if $n == 2;
    return [] if $n == 3;
    return [int rand 9, 'w', {}] if $n == 4;
    return {} if $n == 5;
    return 'b]{' if $n == 6;
    return $depth < 3 ? robject($depth + 1) : int rand 9;
}
sub robject {
    my ($depth) = @_;
    my %o;
    $o{ $KEYS[rand @KEYS] } = rvalue($depth) for 1 .. 1 + int rand 3;
    return \%o;
}
sub rpatch {
    my $n = int rand 40;
    return [1, 2] if $n == 0;
    return robject(0);
}

my $canon = sub { $JSON->encode($_[0]) };
my ($good_state, $good_sub, $good_acks) = (0, 0, 0);
my $WRITERS = 4;
my $PER = 15;
for my $seed (1 .. 20) {
    srand($seed);
    my $doc = "rnd$seed";
    my @w = map { $t->ws_session(instance => $_ % 2 ? 'b' : undef) } 1 .. $WRITERS;
    my @patches = map { [ map { rpatch() } 1 .. $PER ] } 1 .. $WRITERS;
    my $reader;
    my ($acks, $sent) = (0, 0);
    my %want;
    for my $i (0 .. $PER - 1) {
        for my $k (0 .. $WRITERS - 1) {
            my $id = "w$k-$i";
            $w[$k]->send_text('{"type":"delta","doc":"' . $doc . '","id":"' . $id . '","data":'
                . $JSON->encode($patches[$k][$i]) . '}');
            $want{$k}{$id} = 1;
        }
        if ($i == int($PER / 2)) {
            $reader = $t->ws_session(instance => $seed % 2 ? 'b' : undef);
            $reader->send_json({ type => 'subscribe', doc => $doc });
        }
    }
    for my $k (0 .. $WRITERS - 1) {
        for (1 .. $PER) {
            my $m = $w[$k]->wait_for(sub { $_[0]{type} eq 'ack' || $_[0]{type} eq 'nack' }, 15);
            $acks++ if $m && $m->{type} eq 'ack';
        }
        $w[$k]->close;
    }
    $good_acks++ if $acks == $WRITERS * $PER;
    my $head = $WRITERS * $PER;

    # the reference: the stored log in seq order
    my $ref;
    my @log = $t->log_entries($doc);
    $ref = jmerge($ref, $JSON->decode($_->{data})) for @log;
    my $stored = $JSON->decode(state_of($doc));
    if (@log == $head && $canon->($stored) eq $canon->($ref)) {
        $good_state++;
    } else {
        diag "seed $seed: state differs from the reference merge of " . scalar(@log) . " entries";
        diag 'stored ' . $canon->($stored);
        diag 'ref    ' . $canon->($ref);
    }

    # the mid-stream subscriber: its state, then the deltas after it
    my $sub = $reader->wait_for('subscribed', 10);
    my $mine = $sub && $sub->{state} ? $sub->{state}{data} : undef;
    my $at = $sub && $sub->{state} ? $sub->{state}{seq} : -1;
    my $ok = $at >= 0;
    while ($ok && $at < $head) {
        my $d = $reader->wait_for({ type => 'delta' }, 10) or do {
            diag "seed $seed: no delta after $at within 10 s; pending: "
                . join(' ', map { $_->{type} . ':' . ($_->{seq} // '') } @{ $reader->pending })
                . ($reader->got_close ? '; closed ' . $reader->close_code : '')
                . ($reader->is_eof ? '; eof' : '');
            my @l = $t->grep_error_log(
                qr/\[(?:info|notice|warn|error)\].*collab: (?!redis \w+ connection)/);
            diag "  $_" for @l > 20 ? @l[-20 .. -1] : @l;
            $ok = 0;
            last;
        };
        if ($d->{seq} != $at + 1) {
            diag "seed $seed: delta $d->{seq} after $at";
            $ok = 0;
            last;
        }
        $mine = jmerge($mine, $d->{data});
        $at = $d->{seq};
    }
    if ($ok && $canon->($mine) eq $canon->($ref)) {
        $good_sub++;
    } else {
        diag "seed $seed: the mid-stream subscriber ended at $at with " . $canon->($mine);
    }
    $reader->close;
}
is($good_acks, 20, 'every random patch acked, 20 seeds');
is($good_state, 20, 'state == reference merge of the stored log, 20 seeds');
is($good_sub, 20, 'a subscriber that joined mid-stream without since ends with the same state');

$t->done;
done_testing;
