#!/usr/bin/perl

# WebSocket over TLS when the socket fills (issue 8, item 2).  After a
# session detaches from its request, what OpenSSL could not write at EAGAIN
# waits in nginx's SSL buffer (c->buffered & NGX_SSL_BUFFERED): it must go
# out when the socket drains, not wait for the next message, and a close
# frame in that buffer must not be dropped when the session finishes.
#
# The server's kernel send buffer is capped (listen ... ssl sndbuf=32k) and
# the stalled client's receive buffer is 4096 bytes (SO_RCVBUF before
# connect), so that ~100 deltas of 2 KB (200 KB, below collab_send_queue: no
# resync) do not fit in the sockets.  The publisher uses a plain port.
#
# The TLS client is Collab::WS on an IO::Socket::SSL socket; the reads of
# Collab::HTTP are wrapped so that bytes OpenSSL already decrypted
# (pending) are read without waiting for the kernel socket.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Socket::INET;
use IO::Select;
use Socket qw(SOL_SOCKET SO_RCVBUF IPPROTO_TCP TCP_NODELAY sockaddr_in inet_aton);
use Collab::Test;
use Collab::HTTP;

BEGIN {
    eval { require IO::Socket::SSL; 1 }
        or plan skip_all => 'IO::Socket::SSL missing (libio-socket-ssl-perl)';
}

my $t = Collab::Test->new(timeout => 90);
my $dir = $t->dir;

system('openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
       'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj',
       '/CN=localhost', '-keyout', "$dir/key.pem", '-out', "$dir/cert.pem")
    == 0 or die "openssl req failed";

$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%% ssl sndbuf=32k;
        listen 127.0.0.1:%%PORT2%%;
        ssl_certificate %%TESTDIR%%/cert.pem;
        ssl_certificate_key %%TESTDIR%%/key.pem;
        collab_ping 30s;
        collab_rate off;
        # the detached session of this test: a location that logs keeps
        # its request until the session ends (t/107-log-vars.t)
        access_log off;

        location = /collab {
            collab;
            collab_send_queue 1m;
            collab_send_timeout 60s;
        }
    }
EOF
$t->start_nginx;

our $RCVBUF;    # SO_RCVBUF of the next TLS client, undef: the default

{
    no warnings 'redefine';

    my $plain_connect = \&Collab::HTTP::connect_socket;
    my $plain_read = \&Collab::HTTP::read_some;

    *Collab::HTTP::connect_socket = sub {
        my (%c) = @_;
        return $plain_connect->(%c) if $c{port} != $t->port;
        my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
        if ($RCVBUF) {
            setsockopt($s, SOL_SOCKET, SO_RCVBUF, $RCVBUF) or die "SO_RCVBUF: $!";
        }
        connect($s, sockaddr_in($c{port}, inet_aton('127.0.0.1'))) or die "connect: $!";
        setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
        IO::Socket::SSL->start_SSL($s,
            SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE(),
            SSL_hostname => 'localhost')
            or die "TLS handshake: " . IO::Socket::SSL::errstr();
        $s->blocking(0);
        return $s;
    };

    *Collab::HTTP::read_some = sub {
        my ($s, $bufref, $timeout) = @_;
        return $plain_read->(@_) unless $s->isa('IO::Socket::SSL');
        unless ($s->pending) {
            my $sel = IO::Select->new($s);
            return undef unless $sel->can_read($timeout < 0 ? 0 : $timeout);
        }
        my $n = sysread($s, my $chunk, 65536);
        return undef unless defined $n;    # a partial record: wait for more
        $$bufref .= $chunk if $n;
        return $n;
    };
}

sub tls_ws {
    my (%o) = @_;
    local $RCVBUF = delete $o{rcvbuf};
    return $t->ws_session(%o);
}

# the publisher (plain) sends $n deltas of 2 KB to $doc, each acked
sub publish {
    my ($pub, $doc, $from, $n) = @_;
    my $acked = 0;
    for my $i ($from .. $from + $n - 1) {
        $pub->send_json({ type => 'delta', doc => $doc, id => "$doc-$i",
                          data => { i => $i, pad => 'x' x 2000 } });
    }
    for my $i ($from .. $from + $n - 1) {
        my $a = $pub->wait_for({ type => 'ack', id => "$doc-$i" }, 10) or last;
        $acked++;
    }
    return $acked;
}

# seqs of the deltas $ws reads within $secs, until $want of them came; a
# slow reader (10 ms a delta), so that the server drains it in many rounds
sub read_deltas {
    my ($ws, $want, $secs) = @_;
    my @seq;
    my $deadline = time + $secs;
    while (@seq < $want && time < $deadline) {
        my $m = $ws->recv_json($deadline - time) or last;
        next unless $m->{type} eq 'delta';
        push @seq, $m->{seq};
        sleep 0.01;
    }
    return @seq;
}

# the handshake, a delta both ways and the plain port as a reference

{
    my $ws = tls_ws();
    ok($ws->ok, 'a WebSocket over TLS gets its 101 and welcome');
    is($t->subscribe($ws, 'hello')->{type}, 'subscribed', 'subscribed over TLS');
    $ws->send_json({ type => 'delta', doc => 'hello', id => 'h1', data => { a => 1 } });
    ok($ws->wait_for({ type => 'ack', id => 'h1' }, 5), 'its delta is acked over TLS');
    ok($ws->wait_for({ type => 'delta', id => 'h1' }, 5), 'and comes back as a delta');
    $ws->close(1000);
}

my $pub = $t->ws_session(port => $t->port2);

# 1. a subscriber that stalls until its socket is full, then reads: every
# delta arrives without waiting for a later message

{
    my $slow = tls_ws(rcvbuf => 4096);
    is($t->subscribe($slow, 'stall')->{type}, 'subscribed', 'stalled TLS subscriber subscribed');

    is(publish($pub, 'stall', 1, 100), 100, '100 deltas of 2 KB acked while it stalls');

    my $t0 = time;
    my @seq = read_deltas($slow, 100, 10);
    is(scalar @seq, 100, 'the stalled TLS subscriber gets all 100 deltas once it reads')
        or diag("got " . scalar(@seq) . ", last seq " . ($seq[-1] // 'none')
                . " after " . sprintf('%.1f', time - $t0) . " s");
    is_deeply(\@seq, [1 .. 100], 'in order, none missing') if @seq == 100;
    ok(!grep({ $_->{type} eq 'resync' } @{ $slow->pending }), 'no resync (below the queue)');
    $slow->close(1000);
}

# 2. reload while a TLS subscriber stalls: it still gets its last deltas and
# the close frame 1001, not a TCP close

{
    my $slow = tls_ws(rcvbuf => 4096);
    is($t->subscribe($slow, 'reload')->{type}, 'subscribed', 'second stalled TLS subscriber');
    # stalled for real: what the harness read while waiting elsewhere would
    # sit in this process, and the server would see no progress while the
    # test consumes it
    $slow->pump_on(0);

    is(publish($pub, 'reload', 1, 100), 100, '100 deltas acked while it stalls');

    my ($old) = $t->worker_pids;
    kill 'HUP', $t->master_pid;

    # read at once (slowly, still below the 2 s the old worker gives a
    # close to go out)
    my @seq;
    my $deadline = time + 10;
    while (time < $deadline) {
        my $m = $slow->recv_json($deadline - time);
        last unless $m;
        next unless $m->{type} eq 'delta';
        push @seq, $m->{seq};
        sleep 0.005;
    }
    is(scalar @seq, 100, 'all 100 deltas arrive after the reload')
        or diag("got " . scalar(@seq) . ", last seq " . ($seq[-1] // 'none'));
    ok($slow->got_close, 'then a close frame, not a bare TCP close');
    is($slow->close_code, 1001, 'with 1001');

    ok(Collab::Test::wait_until(sub { !$t->pid_alive($old) }, 10), 'the old worker exits');
}

# 3. a reader slower than the 2 s close bound: while its queue moves the
# old worker waits for it (up to 10 s from the close), so a slow client on
# a busy machine still gets everything and 1001; one that stops reading is
# cut off 2 s after its queue last moved

{
    my $slow = tls_ws(rcvbuf => 4096);
    my $dead = tls_ws(rcvbuf => 4096);
    is($t->subscribe($slow, 'slow')->{type}, 'subscribed', 'a slow TLS subscriber');
    is($t->subscribe($dead, 'slow')->{type}, 'subscribed', 'and one that stops reading');
    $_->pump_on(0) for $slow, $dead;

    $pub = $t->ws_session(port => $t->port2);    # the last reload closed it
    is(publish($pub, 'slow', 1, 100), 100, '100 deltas acked while both stall');

    my ($old) = $t->worker_pids;
    my $t0 = time;
    kill 'HUP', $t->master_pid;

    # one 2 KB delta every 50 ms: about 5 s for all of them
    my @seq;
    my $deadline = time + 30;
    while (time < $deadline) {
        my $m = $slow->recv_json($deadline - time);
        last unless $m;
        next unless $m->{type} eq 'delta';
        push @seq, $m->{seq};
        sleep 0.05;
    }
    my $took = time - $t0;
    is(scalar @seq, 100, 'the slow reader gets all 100 deltas')
        or diag("got " . scalar(@seq) . ", last seq " . ($seq[-1] // 'none')
                . sprintf(' in %.1f s', $took));
    cmp_ok($took, '>', 2, sprintf('over more than 2 s (%.1f s)', $took));
    is($slow->close_code, 1001, 'then close 1001');

    ok(Collab::Test::wait_until(sub { !$t->pid_alive($old) }, 15), 'the old worker exits');
    my $n = 0;
    $n++ while $dead->recv_json(2);
    ok($n < 100 && !$dead->got_close,
       "the client that stopped reading was cut off (TCP close after $n messages)");
}

$t->done;
done_testing;
