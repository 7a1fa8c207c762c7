#!/usr/bin/perl

# Hostile client, ping flood (issue 9, item 1).  A WebSocket client that
# never reads and sends empty masked pings (6 bytes each) must not grow the
# worker: control frames count against the send queue, a session whose queue
# is full is not read from until it drains, only the latest unanswered ping
# gets a pong, and a peer that takes nothing of what is queued for it for two
# collab_ping intervals is dropped although it keeps sending.
#
# Beside the attacker, on the same document and the same (single) worker, a
# writer and a reader: every delta is acked and delivered, each within 2 s.
# Worker RSS stays under +20 MB.
#
# The attacker's socket has a 4096-byte receive buffer and the port it uses
# caps the server's send buffer (sndbuf=32k).  Before the fix its pongs
# filled the sockets after a few thousand pings; now it gets one pong per
# read, and what fills its sockets is the deltas of 4 KB of the document it
# subscribed to and does not read: a peer that takes nothing of its queue
# for two collab_ping intervals is dropped, however much it sends.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Select;
use Errno qw(EAGAIN EWOULDBLOCK EPIPE ECONNRESET);
use Collab::Test;
use Collab::HTTP;

my $PINGS = 400_000;           # 2.4 MB of pings
my $FLOOD_SECS = 20;           # at most this long
my $DELTAS = 20;
my $RSS_BOUND_KB = 20 * 1024;

my $t = Collab::Test->new(timeout => 120);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%% sndbuf=32k;
        listen 127.0.0.1:%%PORT2%%;
        collab_ping 2s;

        location = /collab {
            collab;
        }
    }
EOF
$t->start_nginx;

my ($worker) = $t->worker_pids;

# a 4 KB receive buffer: the server's queue fills after a few pongs
sub attacker { return $t->ws_session(rcvbuf => 4096) }

my $writer = $t->ws_session(port => $t->port2);
my $reader = $t->ws_session(port => $t->port2);
is($t->subscribe($reader, 'flood')->{type}, 'subscribed', 'reader subscribed');

my $evil = attacker();
is($t->subscribe($evil, 'flood')->{type}, 'subscribed', 'attacker subscribed to the same document');

# one delta: acked to the writer and delivered to the reader; the time both took
my $n = 0;
sub one_delta {
    my $id = 'd' . ++$n;
    my $t0 = time;
    $writer->send_json({ type => 'delta', doc => 'flood', id => $id,
                         data => { n => $n, pad => 'x' x 4000 } });
    my $ack = $writer->wait_for({ type => 'ack', id => $id }, 5);
    my $got = $reader->wait_for({ type => 'delta', id => $id }, 5);
    return ($ack && $got) ? time - $t0 : undef;
}

my @base = map { one_delta() } 1 .. 5;
ok(!grep({ !defined } @base), 'without the attack, deltas are acked and delivered');

my $rss0 = $t->rss_kb($worker);

# the flood: non-blocking writes of 10,000 pings at a time, a delta between
# chunks; pings the server no longer reads stay in the attacker's socket

$evil->pump_on(0);    # the harness must not read for it while we wait elsewhere
my $sock = $evil->socket;
$sock->blocking(0);
my $chunk = join '', map { "\x89\x80" . pack('N', $_) } 1 .. 10_000;
my ($sent, $off, $stalled) = (0, 0, 0);
my (@lat, $lost);
my $rss_max = $rss0;
my $start = time;
my $next_delta = time;
{
    local $SIG{PIPE} = 'IGNORE';
    while ($sent < $PINGS * 6 && time - $start < $FLOOD_SECS) {
        my $w = syswrite($sock, $chunk, length($chunk) - $off, $off);
        if (defined $w) {
            $sent += $w;
            $off = ($off + $w) % length $chunk;
        } elsif ($! == EAGAIN || $! == EWOULDBLOCK) {
            IO::Select->new($sock)->can_write(0.05);
        } else {
            last;    # closed by the server
        }
        if (time >= $next_delta && @lat < $DELTAS) {
            my $l = one_delta();
            defined $l ? push(@lat, $l) : $lost++;
            $next_delta = time + 0.1;
            my $r = $t->rss_kb($worker) // 0;
            $rss_max = $r if $r > $rss_max;
        }
    }
}
my $pings = int($sent / 6);
my $elapsed = time() - $start;
# the writes end within milliseconds, taken by the kernel's socket buffers:
# what has not reached the server's socket yet is in the attacker's send
# queue (SIOCOUTQ)
my $q = pack('i', 0);
my $unsent = ioctl($sock, 0x5411, $q) ? unpack('i', $q) / 1e6 : -1;
diag(sprintf '%d pings (%.1f MB) written in %.0f ms, %.1f MB of them still in the attacker\'s send queue',
    $pings, $sent / 1e6, $elapsed * 1000, $unsent);

while (@lat + ($lost // 0) < $DELTAS) {
    my $l = one_delta();
    defined $l ? push(@lat, $l) : $lost++;
}

my $r = $t->rss_kb($worker) // 0;
$rss_max = $r if $r > $rss_max;

ok(!$lost, "every delta beside the attack is acked and delivered ($DELTAS)");
my ($worst) = sort { $b <=> $a } @lat;
ok(defined $worst && $worst < 2, sprintf('each within 2 s (worst %.3f s, %.3f s before the attack)',
   $worst // -1, (sort { $b <=> $a } @base)[0]));
cmp_ok($rss_max - $rss0, '<', $RSS_BOUND_KB, sprintf('worker RSS grew %d KB (bound %d KB)',
   $rss_max - $rss0, $RSS_BOUND_KB));

# the attacker goes on, 100,000 pings a second for up to 10 s (two
# collab_ping intervals and more): it is closed, or it is no longer read (its
# writes block for 3 s); meanwhile the others go on too

my $fate = 'read';
{
    local $SIG{PIPE} = 'IGNORE';
    my $end = time + 10;
    my $blocked_since;
    my $slot = time;
    while (time < $end) {
        my $w = syswrite($sock, $chunk, length($chunk) - $off, $off);
        if (defined $w) {
            $off = ($off + $w) % length $chunk;
            $blocked_since = undef;
            $slot += 0.1 * $w / length $chunk;
            sleep($slot - time) if $slot > time;
        } elsif ($! == EAGAIN || $! == EWOULDBLOCK) {
            $blocked_since //= time;
            if (time - $blocked_since > 3) { $fate = 'not read'; last }
            IO::Select->new($sock)->can_write(0.2);
        } else {
            $fate = 'closed';
            last;
        }
        if (time >= $next_delta) {
            defined one_delta() or $lost++;
            $next_delta = time + 0.5;
        }
    }
}
isnt($fate, 'read', "the attacker is closed or no longer read ($fate)");
ok(!$lost, 'the others still get every delta');

$writer->close(1000);
$reader->close(1000);
close $sock;

$t->done;
done_testing;
