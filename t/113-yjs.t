#!/usr/bin/perl

# collab_protocol y-websocket (docs/protocol.md#y-websocket): the stock
# npm y-websocket client (t/yjs, run by node) through two nginx instances
# on one Redis: two clients converge; a late joiner gets the whole document
# and `synced`; offline edits arrive after a reconnect; a viewer's edit is
# refused with an auth message and stored nowhere; awareness is relayed,
# echoed, and nulled when a client drops.  Raw frames: the messages the
# server sends on connect, updates stored as base64 deltas (seen as such by
# a collab.v1 client), malformed or text messages closed, the room checked.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use MIME::Base64;
use Collab::Test;

my $dir = "$FindBin::Bin/yjs";
plan skip_all => 'no t/yjs/node_modules (make t/yjs/node_modules)'
    unless -d "$dir/node_modules";

my $t = Collab::Test->new(timeout => 240);
$t->jwt_keys;
$t->start_redis;

my $conf = <<'EOF';
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_auth variable;
        collab_user $arg_user;
        collab_default_role editor;
        collab_ping 30s;
        location /yjs/ { collab; collab_protocol y-websocket; }
        location /ro/ {
            collab;
            collab_protocol y-websocket;
            collab_default_role viewer;
        }
        location /slow/ {
            collab;
            collab_protocol y-websocket;
            collab_rate 60r/m burst=3;
            collab_max_message 1k;
        }
        location = /collab { collab; }
        location /v1/ { collab; }
        location /compact/ {
            collab;
            collab_protocol y-websocket;
            collab_yjs_compact 5;
            collab_log_retention count=2;
        }
        location /big/ {
            collab;
            collab_protocol y-websocket;
            collab_rate 100000r/s burst=100000;
            collab_max_message 1m;
            collab_send_queue 4m;
        }
        location /bigc/ {
            collab;
            collab_protocol y-websocket;
            collab_rate 100000r/s burst=100000;
            collab_max_message 1m;
            collab_send_queue 4m;
            collab_yjs_compact 1000;
            collab_log_retention count=1000;
        }
        location /cmprl/ {
            collab;
            collab_protocol y-websocket;
            collab_yjs_compact 5;
            collab_rate 1r/m burst=6;
        }
        location /tiny/ {
            collab;
            collab_protocol y-websocket;
            collab_presence_size 64;
        }
        location /none/ {
            collab;
            collab_protocol y-websocket;
            collab_default_role none;
        }
        location /jwt/ {
            collab;
            collab_protocol y-websocket;
            collab_auth jwt;
            collab_jwt_leeway 0;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
    }
EOF
$t->write_nginx_conf($conf);
$t->start_nginx;
$t->start_nginx(name => 'b');

my $url1 = 'ws://127.0.0.1:' . $t->port . '/yjs';
my $url2 = 'ws://127.0.0.1:' . $t->port('b') . '/yjs';
my $ro = 'ws://127.0.0.1:' . $t->port . '/ro';

# runs a scenario of t/yjs/scenario.mjs; its JSON result, or undef
sub scenario {
    my ($name, %args) = @_;
    my $json = JSON::PP->new->canonical;
    my $out = "$dir/.out.$$";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', $out or die;
        exec 'node', "$dir/scenario.mjs", $name, $json->encode(\%args);
        die "node: $!";
    }
    my $rc;
    Collab::Test::wait_until(sub {
        my $r = waitpid($pid, 1);    # WNOHANG
        $rc = $? if $r == $pid;
        return $r == $pid;
    }, 90);
    if (!defined $rc) {
        kill 'KILL', $pid;
        waitpid $pid, 0;
        fail("$name: node did not finish");
        return undef;
    }
    open my $fh, '<', $out or return undef;
    local $/;
    my $text = <$fh>;
    close $fh;
    unlink $out;
    if ($rc) {
        fail("$name: node exited with " . ($rc >> 8));
        return undef;
    }
    my $r = eval { decode_json($text) };
    ok($r, "$name: a result") or diag $text;
    return $r;
}

# lib0 varuint and the messages the tests build
sub varuint {
    my ($n) = @_;
    my $s = '';
    while ($n > 0x7f) { $s .= chr(0x80 | ($n & 0x7f)); $n >>= 7 }
    return $s . chr($n);
}
sub bytes { varuint(length $_[0]) . $_[0] }

# the bytes the server sends instead of a document come from yjs itself
my $b = scenario('bytes');
is_deeply($b && $b->{update}, [0, 0], 'yjs: an empty update is 00 00');
is_deeply($b && $b->{sv}, [0], 'yjs: an empty state vector is 00');

# --- raw frames ---------------------------------------------------------

sub yws {
    my (%o) = @_;
    my $path = delete $o{path} // '/yjs/raw?user=raw';
    return $t->ws(path => $path, protocols => [], %o);
}

sub next_bin {
    my ($ws, $timeout) = @_;
    my $m = $ws->recv_msg($timeout // 5, no_pending => 1) or return undef;
    return $m->{opcode} == 2 ? $m->{data} : "TEXT:$m->{data}";
}

{
    my $ws = yws(path => '/yjs/raw?user=raw');
    ok($ws->ok, 'a y-websocket handshake without a subprotocol');
    is($ws->header('sec-websocket-protocol'), undef, 'none echoed');
    is(next_bin($ws), "\x00\x00\x01\x00", 'first a step 1 with an empty state vector');
    is(next_bin($ws), "\x00\x01\x02\x00\x00", 'then, with an empty log, the step 2 (synced)');

    # an update: stored as a base64 delta
    my $upd = "\x01\x01\x9a\x05\x00\x04\x01\x01t\x01a\x00";
    $ws->send_binary("\x00\x02" . bytes($upd));
    Collab::Test::wait_until(sub { $t->log_len('raw') == 1 }, 10);
    my ($e) = $t->log_entries('raw');
    is($e && $e->{data}, '"' . encode_base64($upd, '') . '"', 'the update is a base64 JSON string in the log');
    is($e && $e->{user}, 'raw', 'by its user');
    # ... relayed back to its sender as an update
    is(next_bin($ws), "\x00\x02" . bytes($upd), 'the sender gets its update back from the log');

    # an empty step 2 (a client with nothing) is not stored
    $ws->send_binary("\x00\x01\x02\x00\x00");
    # a step 1 after the join is answered at once with a step 2
    $ws->send_binary("\x00\x00\x01\x00");
    is(next_bin($ws), "\x00\x01\x02\x00\x00", 'a later step 1 gets a step 2');
    is($t->log_len('raw'), 1, 'the empty update was not stored');

    # a collab.v1 client of the same document sees the update as a delta
    my $v1 = $t->ws_session(path => '/collab?user=v1');
    my $sub = $t->subscribe($v1, 'raw', since => 0);
    is($sub && $sub->{type}, 'subscribed', 'collab.v1 subscribes to the Yjs room');
    my $d = $v1->wait_for('delta', 5);
    is($d && $d->{data}, encode_base64($upd, ''), 'and reads the update as base64 data');
    $v1->close;

    # a later client replays the log, then its step 2
    my $late = yws(path => '/yjs/raw?user=late');
    is(next_bin($late), "\x00\x00\x01\x00", 'late: step 1');
    is(next_bin($late), "\x00\x02" . bytes($upd), 'late: the stored update');
    is(next_bin($late), "\x00\x01\x02\x00\x00", 'late: step 2 last');

    # awareness: echoed to the sender, relayed to the others
    my $aw = "\x01\x01\x07" . bytes('{"n":1}');
    $ws->send_binary("\x01" . bytes($aw));
    is(next_bin($ws), "\x01" . bytes($aw), 'awareness echoed to the sender');
    is(next_bin($late), "\x01" . bytes($aw), 'and relayed to the other');

    # query awareness: the latest known states
    $late->send_binary("\x03");
    is(next_bin($late), "\x01" . bytes($aw), 'query awareness answered');

    # the sender drops: a null state with a higher clock
    $ws->drop;
    is(next_bin($late), "\x01" . bytes("\x01\x01\x08" . bytes('null')),
       'a dropped client\'s state is nulled with clock + 1');

    # a client passes on the states it was sent: they stay their owner's
    my $obs = yws(path => '/yjs/raw?user=obs');
    next_bin($obs) for 1 .. 3;
    my $own = "\x01\x02\x01" . bytes('{"me":2}');
    $late->send_binary("\x01" . bytes($own));
    is(next_bin($late), "\x01" . bytes($own), 'awareness of client 2 echoed');
    is(next_bin($obs), "\x01" . bytes($own), 'and relayed');
    my $relay = "\x01\x05\x03" . bytes('{"other":5}');
    $late->send_binary("\x01" . bytes($relay));
    $late->send_binary("\x03");
    is(next_bin($late), "\x01" . bytes($own), 'a state of another client is neither echoed nor taken as the sender\'s presence');

    # malformed and text messages are closed clearly
    $late->send_binary("\x00\x02\x05ab");
    is($late->expect_close(5), 1007, 'a truncated update: 1007');
    like($late->close_reason // '', qr/truncated/, 'saying why');
    is(next_bin($obs), "\x01" . bytes("\x01\x02\x02" . bytes('null')),
       'its end nulls its own client only');
    $obs->close;

    my $tx = yws(path => '/yjs/raw?user=tx');
    next_bin($tx) for 1 .. 3;
    $tx->send_text('{"type":"delta"}');
    is($tx->expect_close(5), 1003, 'a text message: 1003');

    # a state that is not JSON drops its entry, never the session; one
    # with \u0000 is JSON
    my $bad = yws(path => '/yjs/raw?user=bad');
    next_bin($bad) for 1 .. 3;
    my $nul = "\x01\x11\x01" . bytes('{"a":"\\u0000"}');
    $bad->send_binary("\x01" . bytes("\x02\x11\x01" . bytes('{nope') . "\x12\x01" . bytes('{"ok":1}')));
    is(next_bin($bad), "\x01" . bytes("\x01\x12\x01" . bytes('{"ok":1}')),
       'awareness: an entry whose state is not JSON dropped, the others echoed');
    $bad->send_binary("\x01" . bytes($nul));
    # (the presence snapshot of its join may bring its own state first)
    my ($nok) = bin_until($bad, "\x01" . bytes($nul));
    ok($nok, 'awareness: a state with \\u0000 is JSON');
    ok($bad->is_open, 'awareness: the session goes on');
    $bad->close;

    is($t->log_len('raw'), 1, 'nothing else was stored');

    my $inv = yws(path => '/yjs/bad%20room?user=x');
    is($inv->status, 400, 'an invalid room: 400');
    my $sub2 = yws(path => '/yjs/a/b?user=x');
    is($sub2->status, 400, 'a room with a slash: 400');
    my $echo = yws(path => '/yjs/p?user=x', protocols => ['foo', 'bar']);
    is($echo->header('sec-websocket-protocol'), 'foo', 'the first subprotocol offered is echoed');
    for my $offer (['collab.v1'], ['foo', 'collab.v1']) {
        my $v1 = yws(path => '/yjs/p?user=x', protocols => $offer);
        is($v1->status, 400, "a y-websocket location refuses a client offering @$offer: 400");
    }
    my $r = $t->http(path => '/yjs/p?user=x');
    is($r->{status}, 400, 'a y-websocket location serves only WebSocket');
}

# a Yjs client at a collab.v1 location: served as any (welcome), and its
# first binary message closes with 4400, which the provider does not retry
{
    my $ws = $t->ws(path => '/v1/?user=lost', protocols => []);
    is($ws->status, 101, 'collab.v1 without a subprotocol: 101');
    is(($ws->recv_json(5) // {})->{type}, 'welcome', '... and the welcome');
    $ws->send_binary("\x00\x00\x01\x00");
    is($ws->expect_close(5), 4400, 'a binary message there: 4400');
    like($ws->close_reason // '', qr/y-websocket/, '... pointing to a y-websocket location');
    $ws->drop;
}

# a viewer's update: the auth message, nothing stored
{
    my $v = yws(path => '/ro/raw?user=viewer');
    next_bin($v) for 1 .. 3;
    $v->send_binary("\x00\x02" . bytes("\x01\x01\x9b\x05\x00\x04\x01\x01t\x01b\x00"));
    is(next_bin($v), "\x02\x00" . bytes('permission denied'), 'viewer: permission denied');
    $t->idle(0.3);
    is($t->log_len('raw'), 1, 'viewer: nothing stored');
    ok($v->is_open, 'viewer: still connected (it may read)');
    $v->close;
}

# reads binary messages until one equals $want: the messages before it
sub bin_until {
    my ($ws, $want, $timeout) = @_;
    my @seen;
    my $end = time + ($timeout // 5);
    while (time < $end) {
        my $m = next_bin($ws, $end - time) // last;
        return (1, @seen) if $m eq $want;
        push @seen, $m;
    }
    return (0, @seen);
}

my $step1 = "\x00\x00\x01\x00";
my $step2 = "\x00\x01\x02\x00\x00";

# awareness cannot lock another session out: a viewer that claims the
# victim's client id (seen in the relayed awareness) with the highest clock
# is not relayed, and clocks beyond 2^53 - 1 drop the entry, never close
{
    my $doc = "lock-$$";
    my $vic = yws(path => "/yjs/$doc?user=victim");
    next_bin($vic) for 1 .. 2;
    my $aw = "\x01" . varuint(77) . "\x01" . bytes('{"u":"victim"}');
    $vic->send_binary("\x01" . bytes($aw));
    is(next_bin($vic), "\x01" . bytes($aw), 'lock: the victim\'s awareness echoed');

    my $att = yws(path => "/ro/$doc?user=mallory");
    my ($seen) = bin_until($att, "\x01" . bytes($aw));
    ok($seen, 'lock: the viewer sees the victim\'s client id');
    $att->send_binary("\x01" . bytes("\x01" . varuint(77) . varuint(2**53 - 1)
                                     . bytes('{"u":"mallory"}')));
    $att->send_binary("\x01" . bytes("\x01" . varuint(99) . varuint(2**53 + 5)
                                     . bytes('{"u":"big"}')));
    $att->send_binary($step1);
    my ($ok, @before) = bin_until($att, $step2);
    ok($ok && $att->is_open, 'lock: a clock beyond 2^53 - 1 does not close the session');

    # what the stock client sends on seeing its id with a higher clock
    $vic->send_binary("\x01" . bytes("\x01" . varuint(77) . varuint(2**53)
                                     . bytes('{"u":"victim"}')));
    $vic->send_binary($step1);
    ($ok, @before) = bin_until($vic, $step2);
    ok($ok && $vic->is_open, 'lock: the victim is not closed');
    ok(!grep(/mallory|big/, @before), 'lock: the claimed id was not relayed to the victim')
        or diag explain \@before;

    # a collab.v1 member's presence with base64 data is not awareness
    my $v1 = $t->ws_session(path => '/collab?user=forger');
    $t->subscribe($v1, $doc, since => 0);
    my $forged = "\x01" . varuint(77) . "\x05" . bytes('{"u":"forged"}');
    $v1->send_json({ type => 'presence', doc => $doc, data => encode_base64($forged, '') });
    Collab::Test::wait_until(sub {
        grep(/forger/, @{ $t->redis('HVALS', "collab:{$doc}:presence") }) }, 5);
    my $w = yws(path => "/yjs/$doc?user=w");
    next_bin($w) for 1 .. 2;
    my $waw = "\x01" . varuint(55) . "\x01" . bytes('{"u":"w"}');
    $w->send_binary("\x01" . bytes($waw));
    ($ok, @before) = bin_until($vic, "\x01" . bytes($waw));
    ok($ok, 'forged: a Yjs member\'s awareness arrives');
    ok(!grep(/forged/, @before), 'forged: a collab.v1 presence is not sent as awareness')
        or diag explain \@before;
    $w->send_binary("\x03");
    ($ok, @before) = bin_until($w, "\x01" . bytes($aw), 5);
    ok(!grep(/forged/, @before), 'forged: nor in the answer to a query');
    $_->close for $v1, $w, $att, $vic;
}

# across instances (ownership is checked in the worker only) a claimed id
# never reaches its owner: its client cannot be made to raise its clock
{
    my $doc = "lockx-$$";
    my $vic = yws(path => "/yjs/$doc?user=victim");
    next_bin($vic) for 1 .. 2;
    my $aw = "\x01" . varuint(78) . "\x01" . bytes('{"u":"victim"}');
    $vic->send_binary("\x01" . bytes($aw));
    is(next_bin($vic), "\x01" . bytes($aw), 'lockx: the victim\'s awareness echoed');
    my $att = yws(path => "/ro/$doc?user=mallory", instance => 'b');
    my ($seen) = bin_until($att, "\x01" . bytes($aw));
    ok($seen, 'lockx: the viewer on the other instance sees the id');
    $att->send_binary("\x01" . bytes("\x01" . varuint(78) . varuint(4000)
                                     . bytes('{"u":"mallory"}')));
    my $w = yws(path => "/yjs/$doc?user=w", instance => 'b');
    next_bin($w) for 1 .. 2;
    my $waw = "\x01" . varuint(56) . "\x01" . bytes('{"u":"w"}');
    Collab::Test::wait_until(sub {
        grep(/mallory/, @{ $t->redis('HVALS', "collab:{$doc}:presence") }) }, 5);
    $w->send_binary("\x01" . bytes($waw));
    my ($ok, @before) = bin_until($vic, "\x01" . bytes($waw));
    ok($ok, 'lockx: the other member\'s awareness arrives');
    ok(!grep(/mallory/, @before), 'lockx: the claim of its id is not sent to the owner')
        or diag explain \@before;
    $_->close for $w, $att, $vic;
}

# every message is charged to the rate limit: a flood of 7-byte queries
# (each a presence list in Redis) or step 1s ends like a flood of updates
for my $flood (["\x03", 'query awareness'], [$step1, 'step 1'], ["\x00\x02\x02\x00\x00", 'empty update']) {
    my $s = yws(path => '/slow/qf?user=q');
    next_bin($s) for 1 .. 2;
    $s->send_binary($flood->[0]) for 1 .. 150;
    is($s->expect_close(10), 4529, "a flood of $flood->[1]: 4529");
}

# awareness has its own budget: the states of others a provider passes on
# are neither echoed nor charged, its own over the budget are dropped
# without strikes, and neither takes from the updates' budget
{
    my $s = yws(path => '/slow/aw?user=a');
    next_bin($s) for 1 .. 2;
    my $own = sub { "\x01" . bytes("\x01" . varuint(41) . varuint($_[0]) . bytes('{"a":1}')) };
    $s->send_binary($own->(1));
    is(next_bin($s), $own->(1), 'budget: own awareness echoed');
    my $relay = "\x01" . bytes("\x01" . varuint(42) . "\x01" . bytes('{"b":1}'));
    $s->send_binary($relay) for 1 .. 150;
    $s->send_binary($own->($_)) for 2 .. 151;
    my $upd = "\x01\x01\xa5\x05\x00\x04\x01\x01t\x01q\x00";
    $s->send_binary("\x00\x02" . bytes($upd));
    my ($ok, @before) = bin_until($s, "\x00\x02" . bytes($upd), 10);
    ok($ok && $s->is_open, 'budget: 300 awareness messages, then an update is stored');
    ok(!grep({ $_ eq $relay } @before), 'budget: the states of others are not echoed');
    cmp_ok(scalar(@before), '<=', 5, 'budget: own awareness over the budget dropped');
    $s->close;
}

# awareness larger than collab_presence_size: not relayed, logged once
{
    my $s = yws(path => "/tiny/big-aw-$$?user=big");
    next_bin($s) for 1 .. 2;
    for my $i (1 .. 3) {
        my $aw = "\x01" . bytes("\x01\x21" . varuint($i) . bytes('{"x":"' . ('y' x 100) . '"}'));
        $s->send_binary($aw);
        is(next_bin($s), $aw, "large awareness $i echoed");
    }
    $s->close;
    my @w = $t->grep_error_log(qr/larger than collab_presence_size/);
    is(scalar(@w), 1, 'an awareness larger than collab_presence_size is logged once a session');
}

# queries are coalesced: one presence list in flight, one more after it
{
    my $doc = "qc-$$";
    my $s = yws(path => "/yjs/$doc?user=q");
    next_bin($s) for 1 .. 2;
    my $aw = "\x01" . varuint(31) . "\x01" . bytes('{"q":1}');
    $s->send_binary("\x01" . bytes($aw));
    is(next_bin($s), "\x01" . bytes($aw), 'coalesce: awareness echoed');
    # in one write: they are read at once, before any answer
    $s->send_raw(join '', map { Collab::WS::build_frame(opcode => 2, payload => "\x03") } 1 .. 100);
    is(next_bin($s), "\x01" . bytes($aw), 'coalesce: the first query answered');
    $t->idle(1);
    $s->send_binary($step1);
    my ($ok, @more) = bin_until($s, $step2);
    # (the join's own list may still be in flight at the first query)
    cmp_ok(scalar(@more), '<=', 2, 'coalesce: 100 queries get at most 3 answers')
        or diag explain [map { unpack("H*", $_) } @more];
    $s->close;
}

# the rate limit: a retryable close, never a 44xx the client gives up on
{
    my $s = yws(path => '/slow/rl?user=fast');
    next_bin($s) for 1 .. 2;
    for my $i (1 .. 20) {
        $s->send_binary("\x00\x02" . bytes("\x01\x01\x9c\x05" . chr($i) . "\x04\x01\x01t\x01c\x00"));
    }
    my $code = $s->expect_close(10);
    is($code, 4529, 'over collab_rate: 4529 (the client reconnects)');
}

# collab.v1 deltas in a Yjs room: those whose data is not base64 are not
# for Yjs and are skipped, the session goes on
{
    my $doc = "mix-$$";
    my $y = yws(path => "/yjs/$doc?user=y");
    next_bin($y) for 1 .. 2;
    my $v1 = $t->ws_session(path => '/collab?user=app');
    my $upd = "\x01\x01\xa6\x05\x00\x04\x01\x01t\x01m\x00";
    for my $data ('not base64!', 'abcde', encode_base64($upd, '')) {
        $v1->send_json({ type => 'delta', doc => $doc, id => "m-$data", data => $data });
        $v1->wait_for(sub { ($_[0]{id} // '') eq "m-$data" }, 5);
    }
    is(next_bin($y), "\x00\x02" . bytes($upd), 'mixed: non-base64 deltas skipped, the base64 one delivered');
    ok($y->is_open, 'mixed: the Yjs session goes on');
    $v1->close;
    $y->close;
}

# a snapshot with base64 data (stored by an application): one update
# before the rest of the log
{
    my $doc = "snap-$$";
    my $u1 = "\x01\x01\xa0\x05\x00\x04\x01\x01t\x01x\x00";
    my $u2 = "\x01\x01\xa0\x05\x01\x84\xa0\x05\x00\x01y\x00";
    my $w = yws(path => "/yjs/$doc?user=w");
    next_bin($w) for 1 .. 2;
    $w->send_binary("\x00\x02" . bytes($u1));
    is(next_bin($w), "\x00\x02" . bytes($u1), 'snapshot: the first update stored');
    my $v1 = $t->ws_session(path => '/collab?user=app');
    $v1->send_json({ type => 'state', doc => $doc, seq => 1, data => encode_base64("SNAP", '') });
    my $ok = $v1->wait_for(sub { $_[0]{type} eq 'ok' || $_[0]{type} eq 'error' }, 5);
    is($ok && $ok->{type}, 'ok', 'snapshot: stored at seq 1');
    $v1->close;
    $w->send_binary("\x00\x02" . bytes($u2));
    is(next_bin($w), "\x00\x02" . bytes($u2), 'snapshot: the second update stored');
    my $n = yws(path => "/yjs/$doc?user=n");
    is(next_bin($n), "\x00\x00\x01\x00", 'snapshot: step 1');
    is(next_bin($n), "\x00\x02" . bytes("SNAP"), 'snapshot: the snapshot as an update');
    is(next_bin($n), "\x00\x02" . bytes($u2), 'snapshot: then the log after it');
    is(next_bin($n), "\x00\x01\x02\x00\x00", 'snapshot: step 2 last');
}

# compaction: after 5 updates the client is asked for everything it has,
# which becomes the snapshot; the log is trimmed below it
{
    my $doc = "cmp-$$";
    my $a = yws(path => "/compact/$doc?user=a");
    is(next_bin($a), "\x00\x00\x01\x00", 'compact: step 1');
    is(next_bin($a), "\x00\x01\x02\x00\x00", 'compact: step 2');
    $a->send_binary("\x00\x01\x02\x00\x00");    # its answer: nothing
    my @u = map { "\x01\x01\xa1\x05" . chr($_) . "\x04\x01\x01t\x01z\x00" } 0 .. 6;
    for my $i (0 .. 4) {
        $a->send_binary("\x00\x02" . bytes($u[$i]));
        is(next_bin($a), "\x00\x02" . bytes($u[$i]), "compact: update $i back");
    }
    is(next_bin($a), "\x00\x00\x01\x00", 'compact: asked for a snapshot (step 1)');
    $a->send_binary("\x00\x01" . bytes("FULL5"));
    Collab::Test::wait_until(sub {
        ($t->redis('HGET', "collab:{$doc}:state", 'seq') // 0) == 5
    }, 10);
    is($t->redis('HGET', "collab:{$doc}:state", 'data'), '"' . encode_base64('FULL5', '') . '"',
       'compact: its step 2 is the snapshot at seq 5');
    is($t->log_len($doc), 5, 'compact: not stored as an update');
    for my $i (5 .. 6) {
        $a->send_binary("\x00\x02" . bytes($u[$i]));
        is(next_bin($a), "\x00\x02" . bytes($u[$i]), "compact: update $i back");
    }
    ok($a->is_open, 'compact: the session goes on');
    is_deeply([map { $_->{seq} } $t->log_entries($doc)], [6, 7], 'compact: the log trimmed below the snapshot');
    my $n = yws(path => "/compact/$doc?user=n");
    is(next_bin($n), "\x00\x00\x01\x00", 'compact: a new client: step 1');
    is(next_bin($n), "\x00\x02" . bytes("FULL5"), 'compact: the snapshot');
    is(next_bin($n), "\x00\x02" . bytes($u[5]), 'compact: the tail');
    is(next_bin($n), "\x00\x02" . bytes($u[6]), 'compact: the tail');
    is(next_bin($n), "\x00\x01\x02\x00\x00", 'compact: step 2');
    $n->close;
    $a->close;
}

# a snapshot answer over the rate limit is not stored, and the session,
# which lost nothing (the log has it all), goes on
{
    my $doc = "cmprl-$$";
    my $a = yws(path => "/cmprl/$doc?user=a");
    next_bin($a) for 1 .. 2;
    $a->send_binary("\x00\x01\x02\x00\x00");
    for my $i (0 .. 4) {
        my $u = "\x01\x01\xa7\x05" . chr($i) . "\x04\x01\x01t\x01r\x00";
        $a->send_binary("\x00\x02" . bytes($u));
        is(next_bin($a), "\x00\x02" . bytes($u), "rate-limited snapshot: update $i stored");
    }
    is(next_bin($a), $step1, 'rate-limited snapshot: asked');
    $a->send_binary("\x03") for 1 .. 3;    # the rest of the budget
    $a->send_binary("\x00\x01" . bytes("FULL"));
    my $aw = "\x01" . bytes("\x01\x61\x01" . bytes('{}'));
    $a->send_binary($aw);
    my ($ok) = bin_until($a, $aw);
    ok($ok && $a->is_open, 'rate-limited snapshot: the session goes on');
    ok(!$t->redis('HGET', "collab:{$doc}:state", 'data'), 'rate-limited snapshot: not stored');
    $a->close;
}

# a new epoch (Redis lost the document) starts the compaction count over:
# 5 updates of the new log ask for a snapshot again
{
    my $doc = "cmpe-$$";
    my @u = map { "\x01\x01\xa2\x05" . chr($_) . "\x04\x01\x01t\x01e\x00" } 0 .. 10;
    my $a = yws(path => "/compact/$doc?user=a");
    next_bin($a) for 1 .. 2;
    $a->send_binary("\x00\x01\x02\x00\x00");
    for my $i (0 .. 4) {
        $a->send_binary("\x00\x02" . bytes($u[$i]));
        next_bin($a);
    }
    is(next_bin($a), $step1, 'epoch: asked for a snapshot at seq 5');
    $a->send_binary("\x00\x01" . bytes("FULL5"));
    Collab::Test::wait_until(sub {
        ($t->redis('HGET', "collab:{$doc}:state", 'seq') // 0) == 5
    }, 10);
    $t->redis('DEL', map { "collab:{$doc}:$_" } qw(state log ops));
    $a->send_binary("\x00\x02" . bytes($u[5]));
    my ($ok) = bin_until($a, "\x00\x02" . bytes($u[5]));
    is($a->expect_close(5), 4500, 'epoch: the old membership ends (4500)');
    my $b = yws(path => "/compact/$doc?user=b");
    ($ok) = bin_until($b, $step2);
    ok($ok, 'epoch: a new client reads the new log');
    $b->send_binary("\x00\x01\x02\x00\x00");
    my @seen;
    for my $i (6 .. 9) {
        $b->send_binary("\x00\x02" . bytes($u[$i]));
        push @seen, next_bin($b);
    }
    push @seen, next_bin($b, 3) // '';
    ok(grep({ $_ eq $step1 } @seen), 'epoch: asked for a snapshot after 5 updates of the new log');
    $b->close;
}

# no role at all: permission denied, then 4403
{
    my $x = yws(path => "/none/x-$$?user=nobody");
    is(next_bin($x), "\x00\x00\x01\x00", 'no role: step 1 first');
    is(next_bin($x), "\x02\x00" . bytes('permission denied'), 'no role: permission denied');
    is($x->expect_close(5), 4403, 'no role: 4403, which the client does not retry');
}

# live revocation and role changes, as for collab.v1
{
    my $doc = "acl-$$";
    my $e = yws(path => "/yjs/$doc?user=eve");
    next_bin($e) for 1 .. 2;
    $t->redis('SET', "collab:{$doc}:acl", '{"version":1,"default":"viewer"}');
    $t->redis('PUBLISH', "collab:{$doc}", '{"type":"acl"}');
    # the role message is collab.v1's: a probe tells when it was applied
    Collab::Test::wait_until(sub {
        $e->send_binary("\x00\x02" . bytes("\x01\x01\x9d\x05\x00\x04\x01\x01t\x01d\x00"));
        my $m = next_bin($e, 1) // '';
        return $m eq "\x02\x00" . bytes('permission denied');
    }, 10);
    my $n = $t->log_len($doc);
    $e->send_binary("\x00\x02" . bytes("\x01\x01\x9e\x05\x00\x04\x01\x01t\x01e\x00"));
    is(next_bin($e), "\x02\x00" . bytes('permission denied'), 'an editor made viewer: refused');
    $t->idle(0.3);
    is($t->log_len($doc), $n, 'and nothing stored');
    $t->redis('SET', "collab:{$doc}:acl", '{"version":2,"default":"none"}');
    $t->redis('PUBLISH', "collab:{$doc}", '{"type":"acl"}');
    is($e->expect_close(10), 4403, 'revoked: closed 4403 (the client does not retry)');
}

# a viewer made editor after an update of it was refused: the updates it
# makes next depend on the refused one, so it reconnects (4500) and its
# step 2 uploads everything
{
    my $doc = "up-$$";
    $t->redis('SET', "collab:{$doc}:acl", '{"version":1,"default":"viewer"}');
    my $v = yws(path => "/yjs/$doc?user=vic");
    next_bin($v) for 1 .. 2;
    $v->send_binary("\x00\x02" . bytes("\x01\x01\xa3\x05\x00\x04\x01\x01t\x01v\x00"));
    is(next_bin($v), "\x02\x00" . bytes('permission denied'), 'upgrade: refused as a viewer');
    $t->redis('SET', "collab:{$doc}:acl", '{"version":2,"default":"editor"}');
    $t->redis('PUBLISH', "collab:{$doc}", '{"type":"acl"}');
    is($v->expect_close(10), 4500, 'upgrade: made editor, closed 4500 (the client reconnects)');
    like($v->close_reason // '', qr/role/, 'upgrade: saying why');

    # one that never had an update refused goes on
    my $doc2 = "up2-$$";
    $t->redis('SET', "collab:{$doc2}:acl", '{"version":1,"default":"viewer"}');
    my $w = yws(path => "/yjs/$doc2?user=wen");
    next_bin($w) for 1 .. 2;
    # a collab.v1 member of the same worker sees the ACL applied
    my $o = $t->ws_session(path => '/collab?user=obs');
    $t->subscribe($o, $doc2, since => 0);
    $t->redis('SET', "collab:{$doc2}:acl", '{"version":2,"default":"editor"}');
    $t->redis('PUBLISH', "collab:{$doc2}", '{"type":"acl"}');
    ok($o->wait_for({ type => 'role' }, 10), 'upgrade: the ACL applied');
    my $u = "\x01\x01\xa4\x05\x00\x04\x01\x01t\x01w\x00";
    $w->send_binary("\x00\x02" . bytes($u));
    is(next_bin($w), "\x00\x02" . bytes($u), 'upgrade: without a refused update, no close');
    $o->close;
    $w->close;
}

# tokens: from the query, no auth message; an expired one is retryable
{
    my $no = yws(path => '/jwt/tok');
    is($no->status, 401, 'jwt without a token: 401');
    my $tok = $t->jwt(claims => { sub => 'tim', exp => time + 3 });
    my $w = yws(path => "/jwt/tok?access_token=$tok");
    is($w->status, 101, 'a token in access_token: 101');
    is(next_bin($w), "\x00\x00\x01\x00", 'served at once');
    is($w->expect_close(10), 4501, 'the token expires: 4501, which the client retries');
}

# a y-websocket location without collab_max_message takes messages up to
# its collab_send_queue (256k): a provider uploads its whole document on
# every connect, which must not lock it out with 1009 at 64k
{
    my $doc = "bigdoc-$$";
    my $s = yws(path => "/yjs/$doc?user=big");
    next_bin($s) for 1 .. 2;
    my $upd = 'u' x (200 * 1024);
    $s->send_binary("\x00\x02" . bytes($upd));
    is(next_bin($s, 10), "\x00\x02" . bytes($upd), 'a 200k update on a default y-websocket location: stored');
    $s->close;
}

# collab_max_message: a larger message is refused before it is read
{
    my $s = yws(path => '/slow/big?user=big');
    next_bin($s) for 1 .. 2;
    $s->send_binary("\x00\x02" . bytes('x' x 2000));
    is($s->expect_close(5), 1009, 'a message over collab_max_message: 1009');
    is($t->log_len('big'), 0, 'nothing stored');
}

# --- stock clients -------------------------------------------------------

my $room = 'notes-' . $$;
my $c = scenario('converge', url1 => $url1, url2 => $url2, room => $room, n => 30);
is(length($c->{text} // ''), 60, 'converge: both clients hold all 60 characters') if $c;
is($c->{denied}, 0, 'converge: no refusal') if $c;
cmp_ok($c->{removed_ms}, '<', 5000, 'converge: a dropped client is removed from awareness at once') if $c;

my $l = scenario('late', url1 => $url2, room => $room);
is($l && $l->{text}, $c && $c->{text}, 'late joiner: the whole document');
is($l && $l->{synced_len}, 60, 'late joiner: synced once it had all of it');

my $logged = $t->log_len($room);
my @seqs = map { $_->{seq} } $t->log_entries($room);
is_deeply(\@seqs, [1 .. scalar @seqs], "the log is dense ($logged entries)");

my $dr = scenario('drop', url1 => $url1, url2 => $url2, room => "drop-$$");
like($dr && $dr->{text}, qr/WHILE-DOWN/, 'a dropped client gets what it missed after reconnecting');
like($dr && $dr->{text}, qr/DURING-DROP/, 'and its own edits of that time reach the other');

my $o = scenario('offline', url1 => $url1, url2 => $url2, room => "off-$$");
like($o && $o->{text}, qr/OFFLINE-A.*ONLINE-B|ONLINE-B.*OFFLINE-A/s, 'offline edits arrive after the reconnect');

my $before = $t->log_len("ro-$$");
my $v = scenario('viewer', url1 => $url1, viewer => $ro, room => "ro-$$");
if ($v) {
    is($v->{denied}[0]{reason}, 'permission denied', 'viewer: the stock client gets "permission denied"');
    unlike($v->{editor}, qr/VIEWER/, 'viewer: the editor never sees the edit');
    unlike($v->{late}, qr/VIEWER/, 'viewer: nor does a late joiner');
    like($v->{late}, qr/EDITOR/, 'viewer: the late joiner has the editor\'s edit');
}
my @vdata = map { decode_base64($_->{data} =~ s/"//gr) } $t->log_entries("ro-$$");
ok(!grep({ /VIEWER/ } @vdata), 'viewer: nothing of it in the log');

my $cmp = "cmpx-$$";
my $k = scenario('compact', url1 => 'ws://127.0.0.1:' . $t->port . '/compact', room => $cmp, n => 60);
is($k && $k->{late}, $k && $k->{text}, 'compaction with stock clients: a late joiner converges');
is(length($k->{text} // ''), 60, 'compaction: all 60 characters');
my $len = $t->log_len($cmp);
cmp_ok($len, '<', 20, "compaction: the log stays short ($len entries for 60 updates)");
ok($t->redis('HGET', "collab:{$cmp}:state", 'seq') > 0, 'compaction: a snapshot was stored');

# a room of 10,000 updates: the join time, without and with compaction
for my $loc ('big', 'bigc') {
    my $room = "$loc-$$";
    my $j = scenario('jointime', url1 => 'ws://127.0.0.1:' . $t->port . "/$loc", room => $room,
                     n => 10000, deadline => 120000);
    my $len = $t->log_len($room);
    ok($j, "$loc: a new client of a room of 10,000 updates syncs") or next;
    diag("/$loc/: 10,000 updates written in $j->{write_ms} ms, a new client synced in "
         . "$j->{join_ms} ms, log $len entries");
    # one snapshot is asked at a time, and the writer answers behind the
    # updates relayed to it: on a busy machine the last one or two lag
    # (seen: 1,016 to 3,820); without compaction the log holds 10,000
    cmp_ok($len, '<=', 5000, "$loc: the compacted log stays short") if $loc eq 'bigc';
}

# the document lost by Redis: the providers write it again
my $h = scenario('heal', url1 => $url1, url2 => $url2, room => "heal-$$", redis => $t->redis_port);
is($h && $h->{text}, 'hello world', 'a document Redis lost is written again by its providers');
ok($h && grep({ $_ == 4500 } @{ $h->{closes} }), 'after a close 4500 (resync epoch)');

my $wr = scenario('wrong', url1 => 'ws://127.0.0.1:' . $t->port . '/v1', room => "wrong-$$");
is($wr && $wr->{code}, 4400, 'a provider at a collab.v1 location: closed 4400, and it stops');
is($wr && $wr->{closes}, 1, 'once: it does not retry');

my $lone = scenario('lone', url1 => $url1, room => "lone-$$");
ok($lone && $lone->{echoes} > 0, 'a lone client gets its awareness back');

$t->done;
done_testing;
