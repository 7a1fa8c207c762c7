#!/usr/bin/perl

# Inbound rate limits and connection limits (docs/limits.md):
#   collab_rate: a flooder at 10x its rate gets `nack rate_limited` with
#   retry_after_ms while a well-behaved client on the same document keeps
#   getting every delta acked and delivered in seq order; a flooder that
#   ignores the nacks is closed with 4429 after max(100, 2*burst) of them;
#   intents and presence over the limit are dropped silently (a subscribe
#   costs 4 deltas); Nr/m rates; bytes=.
#   The defaults (50r/s burst=100 bytes=1m), also when collab_rate is
#   written out without bytes=.
#   collab_user_rate: one bucket for all sessions of a user, across the
#   workers of an instance, POST included; it drains while the user is idle,
#   whatever sessions come and go.
#   collab_max_sessions_per_user: HTTP 429 (WS and SSE), close 4429 for a
#   WebSocket that authenticates by message; collab_max_sessions_per_doc:
#   `error rate_limited` for the subscribe over the limit; places are freed by
#   the sessions that held them, not by sessions of locations without limits.
#   collab_limit_zone is required by the shared limits (nginx -t), from its
#   smallest accepted size up.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Select;
use Collab::Test;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->jwt_keys;

$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_limit_zone 1m;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_ping 30s;
        collab_auth variable;
        collab_user $arg_user;
        collab_default_role editor;

        location = /collab {
            collab;
            collab_rate 10r/s burst=100;
        }
        location = /slow {
            collab;
            collab_rate 2r/m burst=5;
        }
        location = /bytes {
            collab;
            collab_max_message 1k;
            collab_rate 1000r/s burst=1000 bytes=2k;
        }
        location = /defaults {
            collab;
        }
        location = /explicit {
            collab;
            collab_rate 50r/s burst=100;
        }
        location = /sessions {
            collab;
            collab_doc $arg_doc;
            collab_max_sessions_per_user 2;
            collab_max_sessions_per_doc 2;
        }
        location = /jwt {
            collab;
            collab_auth jwt;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
            collab_max_sessions_per_user 2;
        }
    }
EOF
$t->start_nginx;

sub delta { my ($doc, $id, $data) = @_; { type => 'delta', doc => $doc, id => $id, data => $data // $id } }

# every message that is already readable on each client, without waiting
sub poll {
    my ($wait, @c) = @_;
    Collab::WS::wait_any([map { $_->{ws} } @c], $wait) if $wait;
    for my $c (@c) {
        next if $c->{ws}->got_close || $c->{ws}->is_eof;
        while (my $m = $c->{ws}->recv_json(0)) {
            push @{ $c->{in} }, $m;
        }
    }
}

sub client { my ($path) = @_; return { ws => $t->ws_session(path => $path), in => [] } }
sub what { my $m = shift; $m ? $m->{type} . ($m->{code} ? ":$m->{code}" : '') : 'nothing' }
sub of_type { my ($c, $type, $code) = @_; grep { $_->{type} eq $type && (!$code || ($_->{code} // '') eq $code) } @{ $c->{in} } }

###########################################################################
# 1. a flooder at 10x its rate next to a well-behaved writer

{
    my $DOC = 'flood';
    my $watch = client('/collab?user=watcher');
    $watch->{ws}->send_json({ type => 'subscribe', doc => $DOC });
    my $good = client('/collab?user=good');
    my $bad = client('/collab?user=bad');
    Collab::Test::wait_until(sub { poll(0.05, $watch); grep { $_->{type} eq 'subscribed' } @{ $watch->{in} } }, 5)
        or BAIL_OUT('no subscribed');

    # collab_rate 10r/s burst=100: the flooder sends 100/s, the good client 8/s
    my ($nbad, $ngood) = (0, 0);
    my $start = time;
    my $phase1 = 2.5;
    while ((my $now = time) < $start + $phase1) {
        while ($nbad < ($now - $start) * 100) {
            $bad->{ws}->send_json(delta($DOC, 'f' . ++$nbad));
        }
        if ($ngood < ($now - $start) * 8) {
            $good->{ws}->send_json(delta($DOC, 'g' . ++$ngood));
        }
        poll(0.004, $watch, $good, $bad);
    }
    Collab::Test::wait_until(sub { poll(0.05, $good, $bad, $watch); @{ $good->{in} } >= $ngood && @{ $bad->{in} } >= $nbad }, 5);
    my $elapsed = time - $start;    # the last reply: an upper bound of the time the bucket drained

    my @gacks = of_type($good, 'ack');
    is(scalar @{ $good->{in} }, $ngood, "well-behaved client: one reply per delta ($ngood)");
    is(scalar @gacks, $ngood, 'well-behaved client: every delta acked while the flooder floods')
        or diag explain [grep { $_->{type} ne 'ack' } @{ $good->{in} }];
    is(join(',', map { $_->{id} } @gacks), join(',', map { "g$_" } 1 .. $ngood), 'acks in order');

    my @back = of_type($bad, 'ack');
    my @nacks = of_type($bad, 'nack', 'rate_limited');
    is(@back + @nacks, $nbad, "flooder: every delta answered with ack or nack rate_limited ($nbad sent)");
    my $max_ok = 101 + int(10 * $elapsed) + 2;
    ok(@back >= 100 && @back <= $max_ok,
        "flooder: the burst and the rate pass (" . scalar(@back) . " acked, 101 + 10/s = at most $max_ok)");
    ok(@nacks > 50, 'flooder: ' . scalar(@nacks) . ' nacks rate_limited');
    my @bad_retry = grep { !defined $_->{retry_after_ms} || $_->{retry_after_ms} !~ /^\d+$/
                           || $_->{retry_after_ms} <= 0 || $_->{retry_after_ms} > 1000 } @nacks;
    ok(@nacks && !@bad_retry, 'every rate_limited nack has 0 < retry_after_ms <= 1000 (10r/s)')
        or diag explain $bad_retry[0];
    ok(!(grep { !$_->{id} || $_->{doc} ne $DOC || !defined $_->{message} } @nacks), 'nacks carry id, doc, message');
    ok(!$bad->{ws}->got_close && !$bad->{ws}->is_eof, 'the flooder is still connected after ' . scalar(@nacks) . ' nacks');

    # the watcher: all acked deltas, dense, in order, the good client's at their acked seq
    my $total = @gacks + @back;
    Collab::Test::wait_until(sub { poll(0.05, $watch); (grep { $_->{type} eq 'delta' } @{ $watch->{in} }) >= $total }, 5);
    my @d = grep { $_->{type} eq 'delta' } @{ $watch->{in} };
    Collab::Test::is_list([map { $_->{seq} } @d], [1 .. $total], "third subscriber: seq 1..$total, no gap, no dup");
    my %seq_of = map { $_->{id} => $_->{seq} } @d;
    is(join(',', map { $seq_of{ $_->{id} } // 'missing' } @gacks), join(',', map { $_->{seq} } @gacks),
        'third subscriber: every delta of the good client at the seq of its ack');
    is($t->log_len($DOC), $total, 'the log holds exactly the acked deltas');
    ok($t->grep_error_log(qr/\[info\].*collab: "bad" is over the rate limit/), 'info: "bad" is over the rate limit');

    # the flooder goes on, ignoring the nacks: closed after 2*burst = 200 of them
    my $t0 = time;
    while (time < $t0 + 6 && !$bad->{ws}->got_close && !$bad->{ws}->is_eof) {
        $bad->{ws}->send_json(delta($DOC, 'f' . ++$nbad)) or last;
        poll(0.01, $bad);
    }
    my $code = $bad->{ws}->expect_close(3);
    is($code, 4429, 'a flooder that ignores the nacks is closed with 4429');
    is($bad->{ws}->close_reason, 'rate limited', 'reason "rate limited"');
    poll(0, $bad);
    push @{ $bad->{in} }, @{ $bad->{ws}->pending };
    my $n = grep { $_->{type} eq 'nack' && $_->{code} eq 'rate_limited' } @{ $bad->{in} };
    is($n, 200, 'closed on the first rejection after max(100, 2*burst) = 200 within 10s');
    ok($bad->{ws}->wait_eof(3), 'then TCP is closed');
    ok($t->grep_error_log(qr/\[warn\].*collab: "bad" keeps flooding, closing the session/),
        'warn: keeps flooding, closing the session');

    # the others go on
    $good->{ws}->send_json(delta($DOC, 'g-after'));
    my $a = $good->{ws}->wait_for({ id => 'g-after' }, 3);
    is($a && $a->{type}, 'ack', 'the good client still gets acks after the flooder is gone');
    my $dd = $watch->{ws}->wait_for({ type => 'delta', id => 'g-after' }, 3);
    ok($dd, 'and the watcher its delta');
    $_->{ws}->close(1000) for $good, $watch;
}

###########################################################################
# 2. Nr/m, intents dropped silently over the limit

{
    my $DOC = 'slow';
    my $a = $t->ws_session(path => '/slow?user=sa');
    my $b = $t->ws_session(path => '/slow?user=sb');
    is($t->subscribe($a, $DOC)->{type}, 'subscribed', 'slow: a subscribed');
    is($t->subscribe($b, $DOC)->{type}, 'subscribed', 'slow: b subscribed');
    # 2r/m burst=5: six deltas' worth pass at once, then one every 30 s;
    # the subscribe cost four of them
    $a->send_json({ type => 'intent', doc => $DOC, data => { i => $_ } }) for 1 .. 6;
    my @got = grep { $_->{type} eq 'intent' } $b->collect(1);
    is(join(',', map { $_->{data}{i} } @got), '1,2', 'intents over the limit are dropped (burst + 1 - 4 for the subscribe pass)');
    my @mine = grep { $_->{type} ne 'presence_snapshot' } $a->collect(0.3);
    is(scalar @mine, 0, 'the sender gets nothing for a dropped intent') or diag explain \@mine;
    $a->send_json(delta($DOC, 's1'));
    my $n = $a->wait_for({ id => 's1' }, 3);
    is($n && $n->{type} . ':' . ($n->{code} // ''), 'nack:rate_limited', 'intents and deltas share the bucket');
    ok($n && $n->{retry_after_ms} > 25000 && $n->{retry_after_ms} <= 30001,
        '2r/m: retry_after_ms about 30 s (' . ($n && $n->{retry_after_ms} // 'none') . ')');
    # presence is counted too (t/94-unmetered.t): dropped like intents
    $a->send_json({ type => 'presence', doc => $DOC, data => { p => 1 } });
    my $p = $b->wait_for('presence', 1);
    ok(!$p, 'presence over the limit is dropped');
    is(scalar($a->collect(0.3)), 0, 'without a reply');
    $_->close(1000) for $a, $b;
}

###########################################################################
# 3. bytes=

{
    my $DOC = 'bytes';
    # bytes=2k with collab_max_message 1k: burst max(2*2k, 1k) = 4k
    my $small = $t->ws_session(path => '/bytes?user=bs');
    $small->send_json(delta($DOC, "s$_", 'x')) for 1 .. 40;
    my @r = map { $small->wait_for({ id => "s$_" }, 3) } 1 .. 40;
    is(scalar(grep { $_ && $_->{type} eq 'ack' } @r), 40, 'bytes=2k: 40 small deltas (~2k) at once pass');

    my $big = $t->ws_session(path => '/bytes?user=bb');
    my $pad = 'y' x 550;                     # ~600 bytes a message
    my $t0 = time;
    $big->send_json(delta($DOC, "b$_", $pad)) for 1 .. 20;
    @r = map { $big->wait_for({ id => "b$_" }, 3) } 1 .. 20;
    my $dt = time - $t0;
    my @acks = grep { $_ && $_->{type} eq 'ack' } @r;
    my @nacks = grep { $_ && $_->{type} eq 'nack' && $_->{code} eq 'rate_limited' } @r;
    ok(@acks >= 6 && @acks <= 7 + int($dt * 4), 'bytes=2k: about 4k of 600-byte deltas pass at once (' . scalar(@acks) . ')');
    is(@acks + @nacks, 20, 'the rest get nack rate_limited');
    my $ra = $nacks[0] && $nacks[0]{retry_after_ms} // 0;
    ok($ra > 0 && $ra <= 400, "retry_after_ms from the byte rate (600 bytes at 2k/s: $ra ms)");
    $t->idle(($ra + 50) / 1000);
    $big->send_json(delta($DOC, 'b-after', $pad));
    my $m = $big->wait_for({ id => 'b-after' }, 3);
    is($m && $m->{type}, 'ack', 'after retry_after_ms the next one passes');
    $_->close(1000) for $small, $big;
}

###########################################################################
# 3b. the defaults: 50r/s burst=100 bytes=1m (byte burst max(2 x 1m, 64k))

{
    my $ws = $t->ws_session(path => '/defaults?user=dc');
    $ws->send_json(delta('defaults', "n$_")) for 1 .. 150;
    my @r = map { $ws->wait_for({ id => "n$_" }, 5) } 1 .. 150;
    my $acks = grep { $_ && $_->{type} eq 'ack' } @r;
    ok($acks >= 101 && $acks <= 110, "default collab_rate: 101 of 150 at once pass ($acks)");
    is(scalar(grep { what($_) eq 'nack:rate_limited' } @r), 150 - $acks, 'the rest: nack rate_limited');
    $ws->close(1000);

    my $big = 'B' x 60000;
    for my $loc ('defaults', 'explicit') {
        my $b = $t->ws_session(path => "/$loc?user=db-$loc");
        my $t0 = time;
        $b->send_json(delta('defaults', "$loc-$_", $big)) for 1 .. 40;
        my @rb = map { $b->wait_for({ id => "$loc-$_" }, 10) } 1 .. 40;
        # the bucket refills at 1 MB/s while the 2.4 MB go through (slowly under ASan)
        my $refill = int((time - $t0) * 1_000_000 / 60_000) + 1;
        my $n = grep { $_ && $_->{type} eq 'ack' } @rb;
        ok($n >= 33 && $n <= 37 + $refill, ($loc eq 'defaults' ? 'default bytes=1m' : 'collab_rate 50r/s burst=100 written out keeps bytes=1m')
            . ": 2 MB of 60 KB deltas at once pass ($n of 40)");
        $b->close(1000);
    }
}

###########################################################################
# 4. sessions per user and per document

{
    my @a = map { $t->ws(path => "/sessions?user=ua") } 1 .. 3;
    is($a[0]->status, 101, 'per user: 1st session');
    is($a[1]->status, 101, 'per user: 2nd session');
    is($a[2]->status, 429, 'per user: 3rd session of max 2: HTTP 429');
    my $sse = $t->sse(path => '/sessions?user=ua&doc=sd0');
    is($sse->status, 429, 'per user: SSE over the limit: HTTP 429');
    my $other = $t->ws(path => '/sessions?user=ub');
    is($other->status, 101, 'another user is not affected');
    my $post = $t->post('/sessions?user=ua', delta('sd0', 'p1'));
    is($post->{status}, 200, 'POST does not count as a session');
    ok($t->grep_error_log(qr/\[info\].*collab: too many sessions for user "ua"/), 'info: too many sessions for user');

    $a[0]->close(1000);
    my $again = Collab::Test::wait_until(sub {
        my $w = $t->ws(path => '/sessions?user=ua');
        return $w if $w->ok;
        undef;
    }, 3);
    ok($again, 'a closed session frees its place');
    $again->close(1000) if $again;
    $_->close(1000) for $a[1], $other;

    # sessions in a location without the limit (same zone) must not free
    # places in the limited one
    my @b = map { $t->ws(path => '/sessions?user=uz') } 1 .. 2;
    is(join(',', map { $_->status } @b), '101,101', 'uz: two sessions of max 2');
    for (1 .. 3) { my $f = $t->ws_session(path => '/collab?user=uz'); $f->close(1000) }
    $t->idle(0.2);
    my $third = $t->ws(path => '/sessions?user=uz');
    is($third->status, 429, 'sessions of the user opened and closed elsewhere do not free places: still 429');
    $_->close(1000) for grep { $_->ok } @b, $third;

    # per document
    my @s = map { $t->ws_session(path => "/sessions?user=d$_") } 1 .. 3;
    is($t->subscribe($s[0], 'pd')->{type}, 'subscribed', 'per doc: 1st subscribe');
    is($t->subscribe($s[1], 'pd')->{type}, 'subscribed', 'per doc: 2nd subscribe');
    my $e = $t->subscribe($s[2], 'pd');
    is($e->{type} . ':' . ($e->{code} // ''), 'error:rate_limited', 'per doc: 3rd subscribe gets error rate_limited');
    is($e->{doc}, 'pd', 'the error names the doc');
    is($t->subscribe($s[0], 'pd')->{type}, 'subscribed', 'a re-subscribe of a member is not refused');
    is($t->subscribe($s[2], 'pd-other')->{type}, 'subscribed', 'other documents are not affected');
    my $sse2 = $t->sse(path => '/sessions?user=d4&doc=pd');
    my $ev = $sse2->wait_event(sub { $_[0]{event} eq 'collab-error' || $_[0]{event} eq 'subscribed' }, 3);
    is($ev && $ev->{json}{code}, 'rate_limited', 'per doc: an event stream over the limit gets error rate_limited');
    $sse2->wait_end(3) if $sse2->can('wait_end');
    ok($sse2->ended, 'and the stream ends');
    $s[1]->send_json({ type => 'unsubscribe', doc => 'pd' });
    $s[1]->wait_for('unsubscribed', 3);
    is($t->subscribe($s[2], 'pd')->{type}, 'subscribed', 'after an unsubscribe the next one gets in');
    $s[0]->close(1000);
    my $s4 = $t->ws_session(path => '/sessions?user=d5&doc=pd');
    my $sub = $s4->wait_for(sub { $_[0]{type} eq 'subscribed' || $_[0]{type} eq 'error' }, 3);
    is($sub && $sub->{type}, 'subscribed', 'a closed session frees its place on the document');
    # pd is full again (s[2], s4): memberships elsewhere must not free places
    my $f = $t->ws_session(path => '/collab?user=elsewhere');
    for (1 .. 3) {
        $t->subscribe($f, 'pd');
        $f->send_json({ type => 'unsubscribe', doc => 'pd' });
        $f->wait_for('unsubscribed', 3);
    }
    my $e2 = $t->subscribe($s[1], 'pd');
    is($e2 && ($e2->{code} // $e2->{type}), 'rate_limited', 'memberships opened and closed in another location do not free places');
    $_->close(1000) for @s[1, 2], $s4, $f;
    ok($t->grep_error_log(qr/\[info\].*collab: too many sessions for document "pd"/), 'info: too many sessions for document');
}

###########################################################################
# 5. collab_user_rate across sessions and workers (a second instance, 2 workers)

# the worker serving a client socket: /proc/net/tcp gives the inode of the
# server side of the connection, /proc/PID/fd who holds it
sub worker_of {
    my ($ws, $name) = @_;
    my $cport = $ws->socket->sockport;
    my $sport = $t->port($name);
    my $inode;
    open my $fh, '<', '/proc/net/tcp' or return undef;
    while (<$fh>) {
        my @f = split ' ';
        next unless $f[1] && $f[2];
        my ($lp) = $f[1] =~ /:([0-9A-F]+)$/;
        my ($rp) = $f[2] =~ /:([0-9A-F]+)$/;
        next unless defined $lp && defined $rp;
        if (hex($lp) == $sport && hex($rp) == $cport) { $inode = $f[9]; last }
    }
    return undef unless $inode;
    for my $pid ($t->worker_pids($name)) {
        opendir my $d, "/proc/$pid/fd" or next;
        for my $fd (readdir $d) {
            my $l = readlink "/proc/$pid/fd/$fd" // next;
            return $pid if $l eq "socket:[$inode]";
        }
    }
    return undef;
}

{
    $t->write_nginx_conf(<<'EOF', name => 'b', workers => 2);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_limit_zone 1m;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_auth variable;
        collab_user $arg_user;
        collab_default_role editor;
        location = /collab {
            collab;
            collab_rate off;
            collab_user_rate 10r/s burst=10;
            collab_max_sessions_per_user 8;
        }
    }
EOF
    $t->start_nginx(name => 'b');

    # two sessions of "ur" on different workers
    my (@ur, %seen);
    for (1 .. 40) {
        my $w = $t->ws_session(instance => 'b', path => '/collab?user=ur');
        my $pid = worker_of($w, 'b');
        if (defined $pid && !$seen{$pid}++) { push @ur, $w } else { $w->close(1000) }
        last if @ur == 2;
    }
    is(scalar @ur, 2, 'two sessions of one user on two different workers') or diag explain \%seen;
    my $other = $t->ws_session(instance => 'b', path => '/collab?user=other');

    my $t0 = time;
    for my $i (1 .. 20) {
        $ur[$_]->send_json(delta('ur', "u$_-$i")) for 0 .. $#ur;
        $other->send_json(delta('ur', "o$i")) if $i <= 10;
    }
    my (%acks, %nacks, @retry);
    for my $k (0 .. $#ur) {
        for my $i (1 .. 20) {
            my $m = $ur[$k]->wait_for({ id => "u$k-$i" }, 3) or next;
            $acks{$k}++ if $m->{type} eq 'ack';
            if ($m->{type} eq 'nack' && $m->{code} eq 'rate_limited') { $nacks{$k}++; push @retry, $m->{retry_after_ms} }
        }
    }
    my $dt = time - $t0;
    my $ok = ($acks{0} // 0) + ($acks{1} // 0);
    my $max = 11 + int($dt * 10) + 1;
    ok($ok >= 11 && $ok <= $max, "user rate 10r/s burst=10 over two sessions on two workers: $ok of 40 acked (11..$max)");
    is($ok + ($nacks{0} // 0) + ($nacks{1} // 0), 40, 'the others: nack rate_limited');
    ok(!(grep { !$_ || $_ <= 0 } @retry), 'with retry_after_ms > 0');
    my @o = map { $other->wait_for({ id => "o$_" }, 3) } 1 .. 10;
    is(scalar(grep { $_ && $_->{type} eq 'ack' } @o), 10, 'another user has a bucket of its own');

    # POST by the same user shares the bucket (no session rate there)
    my $r = $t->post('/collab?user=ur', [map { delta('ur', "p$_") } 1 .. 5], instance => 'b');
    my @types = map { $_->{type} . ':' . ($_->{code} // '') } @{ $r->{json} || [] };
    ok(@types == 5 && (grep { $_ eq 'nack:rate_limited' } @types), 'POST of the same user: nack rate_limited (' . join(',', @types) . ')');

    # the user's bucket drains while the user is idle, also across a new session
    my $c1 = $t->ws_session(instance => 'b', path => '/collab?user=uc');
    $c1->send_json(delta('uc', "c$_")) for 1 .. 12;
    my @c = map { $c1->wait_for({ id => "c$_" }, 3) } 1 .. 12;
    ok((grep { $_ && $_->{type} eq 'nack' } @c), 'uc: over its burst');
    $t->idle(1.5);    # 10r/s: the burst of 10 drains in 1 s
    my $c2 = $t->ws_session(instance => 'b', path => '/collab?user=uc');
    $c2->send_json(delta('uc', 'c-new'));
    my $cm = $c2->wait_for({ id => 'c-new' }, 3);
    is(what($cm), 'ack', '1.5 s later a new session of the user gets its delta acked');
    $_->close(1000) for @ur, $other, $c1, $c2;
    $t->stop_nginx(name => 'b');
}

###########################################################################
# 6. the shared limits need collab_limit_zone

for my $d ('collab_user_rate 5r/s', 'collab_max_sessions_per_user 3', 'collab_max_sessions_per_doc 3') {
    my ($rc, $out) = $t->check_nginx_conf(<<"EOF");
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server { listen 127.0.0.1:%%PORT%%; location = /c { collab; $d; } }
EOF
    isnt($rc, 0, "nginx -t: $d without collab_limit_zone fails");
    like($out, qr/require "collab_limit_zone"/, '... and says why');
}
{
    my ($rc, $out) = $t->check_nginx_conf(<<"EOF");
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server { listen 127.0.0.1:%%PORT%%; location = /c { collab; collab_rate 5r/x; } }
EOF
    isnt($rc, 0, 'nginx -t: collab_rate 5r/x fails');
}
# the smallest zone the directive accepts (8 pages) and a large one work
for my $z ('32k', '10m') {
    my ($rc, $out) = $t->check_nginx_conf(<<"EOF");
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_limit_zone $z;
    server { listen 127.0.0.1:%%PORT%%; location = /c { collab; collab_max_sessions_per_user 3; } }
EOF
    is($rc, 0, "nginx -t: collab_limit_zone $z") or diag $out;
}
{
    my ($rc, $out) = $t->check_nginx_conf(<<"EOF");
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_limit_zone 16k;
    server { listen 127.0.0.1:%%PORT%%; location = /c { collab; } }
EOF
    isnt($rc, 0, 'nginx -t: collab_limit_zone 16k is too small');
    like($out, qr/invalid zone size/, '... invalid zone size');
}

###########################################################################
# 7. JWT identities: a WebSocket that authenticates by message gets close
#    4429, one with the token in the request 429; the worker lives on

{
    my @pids = $t->worker_pids;
    my $tok = $t->jwt(claims => { sub => 'jwtuser', exp => int(time) + 300 });
    my @j = map { $t->ws(path => '/jwt', headers => ["Authorization: Bearer $tok"]) } 1 .. 2;
    is(join(',', map { $_->status } @j), '101,101', 'jwt: two sessions of max 2');
    my $m = $t->ws(path => '/jwt');
    $m->send_json({ type => 'auth', token => $tok });
    is($m->expect_close(3), 4429, 'jwt by the auth message, over the limit: close 4429');
    my $h = $t->ws(path => '/jwt', headers => ["Authorization: Bearer $tok"]);
    is($h->status, 429, 'jwt in the request, over the limit: HTTP 429');
    # anything that sets a timer in the worker after the refused session
    my $after = $t->ws(path => '/jwt', headers => ["Authorization: Bearer "
        . $t->jwt(claims => { sub => 'jwt-other', exp => int(time) + 300 })]);
    is($after->status, 101, 'another user after the refusals');
    ok($after->ok && $after->wait_for('welcome', 2), 'and it is served');
    is(join(',', $t->worker_pids), join(',', @pids), 'the worker survived the refused sessions');
    $_->close(1000) for grep { $_->ok } @j, $after;
}

$t->done;
done_testing;
