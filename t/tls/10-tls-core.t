#!/usr/bin/perl

# WebSocket over TLS (wss://, `listen ... ssl`): the handshake, deltas both
# ways (small and spread over many TLS records), a reader that stalls until
# the socket is full and then drains, close 1001 on reload and on shutdown.
#
# The stalled readers have a 4096-byte receive buffer (set before connect)
# and the server's send buffer is capped (sndbuf=32k), so what they do not
# read piles up in the module's send queue and in OpenSSL's buffers; the
# volume (100 to 121 deltas of 2 to 5 KB) stays below collab_send_queue, so no
# resync.  Every stall step runs over TLS (port 2) and, as the control, the
# same steps over plain HTTP (port 3), with several volumes each (whether the
# last write of the server meets a full socket depends on where the TLS
# records end).  The other clients use port 1 (TLS, no sndbuf cap).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;
use Collab::WS;

my $t = Collab::Test->new(timeout => 120, tls => 1);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT2%% sndbuf=32k;
        listen 127.0.0.1:%%PORT3%% sndbuf=32k;    # no-tls
        collab_ping 30s;
        collab_rate off;
        client_max_body_size 4m;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_max_message 256k;
            collab_send_queue 1m;
            collab_send_timeout 120s;
        }
    }
EOF
$t->start_nginx;

my $N = 100;
my $PAD = 'z' x 2000;

# a subscriber with a 4 KB receive buffer that reads only when told to
sub stalled {
    my ($tls, $doc) = @_;
    my $ws = Collab::WS->new(port => $tls ? $t->port2 : $t->port3, tls => $tls,
        rcvbuf => 4096, pump => 0);
    $ws->ok && $ws->wait_for('welcome', 5) or die "stalled client: no welcome\n";
    my $s = $t->subscribe($ws, $doc);
    die "stalled client: not subscribed to $doc\n" unless $s && $s->{type} eq 'subscribed';
    return $ws;
}

# deltas $from..$to of 2 KB (+ $more bytes) from a WebSocket writer on port
# 1 (TLS), 10 in flight at a time; number acked.  (Not POST: under ASan a
# POST ack is the use-after-free of issue 8 item 4, which would hide these.)
my $WRITER;
sub post_deltas {
    my ($doc, $from, $to, $more) = @_;
    $WRITER //= $t->ws_session;
    my $acked = 0;
    for (my $i = $from; $i <= $to; $i += 10) {
        my $last = $i + 9 > $to ? $to : $i + 9;
        $WRITER->send_json({ type => 'delta', doc => $doc, id => "$doc-$_",
            data => { n => $_, pad => $PAD . ('y' x ($more // 0)) } }) for $i .. $last;
        for my $n ($i .. $last) {
            my $a = $WRITER->wait_for({ id => "$doc-$n" }, 20);
            $acked++ if $a && $a->{type} eq 'ack';
        }
    }
    return $acked;
}

# the seqs of the deltas the client reads until it has $upto or $secs pass;
# it reads slowly (at most 4 KB, then a pause of 2 ms), so the server's
# socket stays full until the end, as with a client on a slow link
sub read_until {
    my ($ws, $upto, $secs, $seqs) = @_;
    my $deadline = time + $secs;
    local $ws->{read_max} = 4096;
    while ((!@$seqs || $seqs->[-1] < $upto) && time < $deadline) {
        my $m = $ws->recv_json($deadline - time) or last;
        push @$seqs, $m->{seq} if $m->{type} eq 'delta';
        $t->idle(0.002);
    }
    return $seqs;
}

###########################################################################
# handshake

my $a = $t->ws_session;
ok($a->tls, 'wss: the client speaks TLS');
ok($a->accept_ok, 'Sec-WebSocket-Accept over TLS');
like($a->socket->get_sslversion // '', qr/^TLSv1_[23]$/, 'TLS 1.2 or 1.3: ' . ($a->socket->get_sslversion // '?'));
ok($a->{welcome} && $a->{welcome}{type} eq 'welcome', 'welcome over TLS');
my $r = $t->http(path => '/collab');
is($r->{status}, 400, 'a plain GET over TLS: 400');

###########################################################################
# deltas both ways

{
    my $b = $t->ws_session;
    is($t->subscribe($a, 'both')->{type}, 'subscribed', 'a subscribed');
    is($t->subscribe($b, 'both')->{type}, 'subscribed', 'b subscribed');
    $a->send_json({ type => 'delta', doc => 'both', id => 'a1', data => 'from a' });
    is(($a->wait_for({ id => 'a1', type => 'ack' }, 5) // {})->{type}, 'ack', 'a: ack');
    my $m = $b->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'a1' }, 5);
    is($m && $m->{data}, 'from a', 'b gets the delta of a');
    my $big = 'B' x 150_000;    # ten TLS records
    $b->send_json({ type => 'delta', doc => 'both', id => 'b1', data => $big });
    is(($b->wait_for({ id => 'b1', type => 'ack' }, 5) // {})->{type}, 'ack', 'b: 150 KB delta acked');
    $m = $a->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'b1' }, 5);
    ok($m && $m->{data} eq $big, 'a gets the 150 KB delta of b whole');
    # the same to a reader at full speed behind sndbuf=32k
    my $c = Collab::WS->new(port => $t->port2);
    $c->wait_for('welcome', 5);
    is($t->subscribe($c, 'both')->{type}, 'subscribed', 'c subscribed on the sndbuf=32k port');
    my @got;
    for my $i (2 .. 6) {
        $b->send_json({ type => 'delta', doc => 'both', id => "b$i", data => $big });
        $b->wait_for({ id => "b$i" }, 5);
        my $m = $c->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq "b$i" }, 3);
        push @got, "b$i" if $m && $m->{data} eq $big;
    }
    {
        is("@got", 'b2 b3 b4 b5 b6', 'sndbuf=32k: each 150 KB delta arrives whole before the next is sent');
    }
    $c->close(1000);
    $b->close(1000);
}

###########################################################################
# a reader that stalls until the socket is full, then drains

for my $tls (0, 1) {
    my $over = $tls ? 'TLS' : 'plain HTTP';
    my $doc = $tls ? 'stall-tls' : 'stall-plain';
    my $ws = stalled($tls, $doc);
    is(post_deltas($doc, 1, $N), $N, "$over: $N deltas of 2 KB acked while a subscriber stalls");
    my $seqs = read_until($ws, $N, 5, []);
    # one more delta makes the server write again
    is(post_deltas($doc, $N + 1, $N + 1), 1, "$over: one more delta");
    read_until($ws, $N + 1, 5, $seqs);
    Collab::Test::is_list($seqs, [1 .. $N + 1],
        "$over: the reader drains every delta, in order, once a later one comes");
    ok(!$ws->got_close, "$over: and is not closed");
    $ws->close(1000);
}

# the same without the later delta
my @VOLUMES = map { [$N + 3 * $_, 397 * $_] } 0 .. 7;    # [deltas, extra bytes]
for my $tls (0, 1) {
    my $over = $tls ? 'TLS' : 'plain HTTP';
    my @bad;
    for my $k (0 .. $#VOLUMES) {
        my ($n, $more) = @{ $VOLUMES[$k] };
        my $doc = ($tls ? 'tail-tls-' : 'tail-plain-') . $k;
        my $ws = stalled($tls, $doc);
        post_deltas($doc, 1, $n, $more) == $n or push @bad, "$doc: not all acked";
        my $seqs = read_until($ws, $n, 3, []);
        push @bad, "$doc: got " . scalar(@$seqs) . " of $n deltas (last "
            . ($seqs->[-1] // 'none') . ')' unless "@$seqs" eq join(' ', 1 .. $n);
        $ws->close(1000);
    }
    {
        ok(!@bad, "$over: a stalled reader gets all its deltas when it reads, with nothing sent after")
            or diag join "\n", @bad;
    }
}

###########################################################################
# reload: a stalled client gets its last deltas, then close 1001

my @reload;
for my $tls (0, 1) {
    for my $k (0 .. 5) {
        my $doc = ($tls ? 'reload-tls-' : 'reload-plain-') . $k;
        push @reload, { tls => $tls, doc => $doc, n => $N + 2 * $k,
                        more => 251 * $k, ws => stalled($tls, $doc) };
    }
}
my $reader = $t->ws_session;
is($t->subscribe($reader, 'reload-read')->{type}, 'subscribed', 'a reading TLS client subscribed');
my $acked = 0;
$acked += post_deltas($_->{doc}, 1, $_->{n}, $_->{more}) == $_->{n} for @reload;
is($acked, scalar @reload, 'deltas acked for every stalled subscriber');
# they read from the HUP on (the harness reads them whenever it waits): the
# exiting worker cuts off a client whose queue did not move for 2 s, and on
# a busy machine reload_nginx alone can take longer than that
$_->{ws}->pump_on(1) for @reload;
$t->reload_nginx;
is($reader->expect_close(5), 1001, 'reload: a reading TLS client gets close 1001');
# all of them read at once, 8 KB at a time, up to their close frame or their
# end: an exiting worker waits for a client whose queue moved within the last
# 2 s, up to 10 s from the close (session.c NGX_HTTP_COLLAB_LINGER, _MAX)
{
    my $deadline = time + 15;
    for my $c (@reload) { $c->{ws}{read_max} = 8192; $c->{seqs} //= [] }
    while (time < $deadline) {
        # a client the harness already read to its end may still hold frames
        my @open = grep {
            my $ws = $_->{ws};
            !$ws->got_close && (!$ws->is_eof || @{ $ws->{frames} } || length $ws->{buf})
        } @reload or last;
        for my $c (@open) {
            while (my $m = $c->{ws}->recv_json(0)) {
                push @{ $c->{seqs} }, $m->{seq} if $m->{type} eq 'delta';
            }
        }
        Collab::WS::wait_any([map { $_->{ws} } @open], 0.05);
    }
}
for my $tls (0, 1) {
    my $over = $tls ? 'TLS' : 'plain HTTP';
    my (@lost, @code);
    for my $c (grep { $_->{tls} == $tls } @reload) {
        my $ws = $c->{ws};
        my @seqs = @{ $c->{seqs} };
        my $code = $ws->got_close ? $ws->close_code : undef;
        push @lost, "$c->{doc}: got " . scalar(@seqs) . " of $c->{n} deltas"
            unless "@seqs" eq join(' ', 1 .. $c->{n});
        push @code, "$c->{doc}: " . ($code // 'no close frame (TCP close)')
            unless ($code // 0) == 1001;
    }
    {
        ok(!@lost, "reload, $over: stalled clients read all their deltas") or diag join "\n", @lost;
        ok(!@code, "reload, $over: then close 1001") or diag join "\n", @code;
    }
}

###########################################################################
# shutdown

my $q = $t->ws_session;
is($t->subscribe($q, 'quit')->{type}, 'subscribed', 'a TLS client on the new worker');
my $qs = $t->sse(path => '/collab?doc=quit');
ok($qs->wait_event('subscribed', 5), 'an SSE stream over HTTPS');
ok($t->quit_nginx(timeout => 10), 'quit: nginx exits');
is($q->expect_close(3), 1001, 'quit: the TLS client got close 1001');
ok($qs->wait_end(3), 'quit: the HTTPS event stream ended');

$t->done;
done_testing;
