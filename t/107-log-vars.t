#!/usr/bin/perl

# The $collab_* variables of the access log (issue 11, item 3), and the
# access log line of a WebSocket or event stream written when the session
# ends, not at its 101/200: client close 1000, TCP drop, reload 1001, an
# event stream that the client leaves (HTTP/1.1 and HTTP/2 through curl),
# POST and GET logged as usual with the variables filled.  A location with
# "access_log off" keeps today's lean detach (no request kept, no line).
#
# COLLAB_RSS=2000 also measures the worker's RSS per idle WebSocket with
# and without an access log (the numbers of docs/limits.md).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;

# what the server wrote to a client, counted the way the server counts it:
# every frame's bytes, text frames as messages
{
    no warnings 'redefine';
    my $orig = \&Collab::WS::_parse_frame;
    *Collab::WS::_parse_frame = sub {
        my ($self) = @_;
        my $before = length $self->{buf};
        my $f = $orig->(@_) or return undef;
        $self->{rx_bytes} += $before - length $self->{buf};
        $self->{rx_text}++ if $f->{opcode} == 1;
        return $f;
    };
}

my $t = Collab::Test->new(timeout => 180);
$t->start_redis;

my $FMT = 'tag=$arg_tag session=$collab_session user=$collab_user '
        . 'docs=$collab_docs code=$collab_close_code in=$collab_msgs_in '
        . 'out=$collab_msgs_out bytes=$collab_bytes_out dur=$collab_duration '
        . 'status=$status rt=$request_time method=$request_method '
        . 'proto=$server_protocol';

my $conf = <<"EOF";
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    log_format collab '$FMT';
    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT2%% ssl http2;
        ssl_certificate %%SSL_CERT%%;
        ssl_certificate_key %%SSL_KEY%%;
        collab_ping 30s;
        access_log %%TESTDIR%%/collab.log collab;
        location = /collab {
            collab;
            collab_doc \$arg_doc;
            collab_user \$arg_user;
        }
        location = /quiet {
            collab;
            collab_doc \$arg_doc;
            access_log off;
        }
    }
EOF
$t->write_nginx_conf($conf, workers => 1);
$t->start_nginx;

my $LOG = $t->dir . '/collab.log';

# the lines of one request, as {field => value}
sub lines {
    my ($tag) = @_;
    my @l;
    for (split /\n/, Collab::Test::slurp($LOG)) {
        next unless /^tag=\Q$tag\E /;
        push @l, { map { /^([a-z]+)=(.*)$/ ? ($1, $2) : () } split / / };
    }
    return @l;
}

sub line_of {
    my ($tag) = @_;
    Collab::Test::wait_until(sub { lines($tag) }, 10, 0.05);
    my @l = lines($tag);
    is(scalar @l, 1, "$tag: exactly one line") or diag explain \@l;
    return $l[0] || {};
}

# the bytes of events as the server wrote them (sse.c): no heartbeats here
sub sse_bytes {
    my $n = 0;
    for my $e (@_) {
        next if $e->{comment};
        $n += length("event: $e->{event}\n") + length("data: $e->{data}\n\n");
        $n += length("id: $e->{id}\n") if defined $e->{id};
    }
    return $n;
}

sub sse_all {
    my ($sse, $first) = @_;
    my @ev;
    my $e = $sse->wait_event($first, 5) or return;
    push @ev, @{ $sse->{pending} }, $e;
    @{ $sse->{pending} } = ();
    while (my $more = $sse->next_event(0.3)) { push @ev, $more }
    return @ev;
}

sub common {
    my ($l, $tag, %w) = @_;
    for my $k (sort keys %w) {
        is($l->{$k}, $w{$k}, "$tag: $k");
    }
    like($l->{dur} // '', qr/^\d+\.\d{3}$/, "$tag: duration in seconds with ms");
    ok(abs(($l->{dur} // 0) - ($l->{rt} // -9)) < 0.5,
       "$tag: \$collab_duration $l->{dur} ~ \$request_time $l->{rt}");
}

###########################################################################
# WebSocket, closed by the client with 1000

my $ws = $t->ws_session(path => '/collab?doc=a&user=alice&tag=ws1');
my $sid = $ws->{welcome}{session};
ok($ws->wait_for({ type => 'subscribed', doc => 'a' }, 5), 'ws1: subscribed to a');
is($t->subscribe($ws, 'b')->{type}, 'subscribed', 'ws1: subscribed to b');
$ws->send_json({ type => 'delta', doc => 'a', id => 'ws1-1', data => { n => 1 } });
ok($ws->wait_for({ type => 'ack', id => 'ws1-1' }, 5), 'ws1: delta acked');
$t->idle(0.5);
is(scalar lines('ws1'), 0, 'ws1: no line while the session lives (not at the 101)');
$ws->collect(0.2);
is($ws->close(1000), 1000, 'ws1: closed with 1000');
my $l = line_of('ws1');
common($l, 'ws1', session => $sid, user => 'alice', docs => 'a,b', code => 1000,
       in => 2, out => $ws->{rx_text}, bytes => $ws->{rx_bytes}, status => 101,
       method => 'GET');
ok($l->{dur} >= 0.5, "ws1: the duration covers the session ($l->{dur})");
ok(!$t->grep_error_log(qr/session \Q$sid\E detached/),
   'ws1: a session whose location logs keeps its request');

###########################################################################
# WebSocket dropped without a close frame

$ws = $t->ws_session(path => '/collab?doc=c&user=carol&tag=ws2');
$sid = $ws->{welcome}{session};
ok($ws->wait_for({ type => 'subscribed', doc => 'c' }, 5), 'ws2: subscribed to c');
$ws->collect(0.3);
is(scalar lines('ws2'), 0, 'ws2: no line while the session lives');
$ws->drop;
$l = line_of('ws2');
common($l, 'ws2', session => $sid, user => 'carol', docs => 'c', code => 1006,
       in => 0, out => $ws->{rx_text}, bytes => $ws->{rx_bytes}, status => 101);

###########################################################################
# an event stream the client leaves

my $sse = $t->sse(path => '/collab?doc=a&user=dave&tag=sse1');
ok($sse->ok, 'sse1: 200');
my @ev = sse_all($sse, 'subscribed');
ok(@ev >= 2, 'sse1: welcome and subscribed') or diag explain \@ev;
is(scalar lines('sse1'), 0, 'sse1: no line while the stream lives');
$sse->close;
$l = line_of('sse1');
common($l, 'sse1', user => 'dave', docs => 'a', code => 1006, in => 0,
       out => scalar(@ev), bytes => sse_bytes(@ev), status => 200);
like($l->{session}, qr/^[0-9a-f]{16}$/, 'sse1: a session id');

###########################################################################
# POST and GET: logged as usual, with the variables

my $r = $t->post('/collab?user=erin&tag=p1', [
    { type => 'delta', doc => 'a', id => 'p1-a', data => 1 },
    { type => 'delta', doc => 'd', id => 'p1-d', data => 2 },
    { type => 'delta', doc => 'a', id => 'p1-a2', data => 3 },
]);
is($r->{status}, 200, 'p1: POST answered');
$l = line_of('p1');
common($l, 'p1', user => 'erin', docs => 'a,d', code => '-', in => 3, out => 3,
       bytes => length($r->{body}), status => 200, method => 'POST');

$r = $t->http(path => '/collab?doc=a&view=deltas&since=0&tag=g1');
is($r->{status}, 200, 'g1: read answered');
$l = line_of('g1');
common($l, 'g1', user => 'anonymous', docs => 'a', code => '-', in => 0, out => 1,
       bytes => length($r->{body}), status => 200);

# refused before a session exists: the variables are "-"
$r = $t->http(path => '/collab?doc=a&tag=bad');
is($r->{status}, 400, 'bad: neither WebSocket nor event stream');
$l = line_of('bad');
is(join(' ', map { $l->{$_} } qw(session user docs code in out bytes dur)),
   '- - - - - - - -', 'bad: no session, every variable "-"');

###########################################################################
# access_log off: the lean detach of today, no line

$ws = $t->ws_session(path => '/quiet?doc=q&tag=q1');
$sid = $ws->{welcome}{session};
ok($ws->wait_for({ type => 'subscribed', doc => 'q' }, 5), 'q1: subscribed');
ok(Collab::Test::wait_until(sub { $t->grep_error_log(qr/session \Q$sid\E detached/) }, 5),
   'q1: access_log off: the session detached from its request');
is($ws->close(1000), 1000, 'q1: closed');

###########################################################################
# HTTP/2 event stream through curl, which goes away

my $c = $t->curl_start('--http2', '-N', '-H', 'Accept: text/event-stream',
    'https://127.0.0.1:' . $t->port2 . '/collab?doc=a&user=gina&tag=h2');
ok(Collab::Test::wait_until(sub { Collab::Test::slurp($c->{out}) =~ /event: subscribed\n(?:[^\n]+\n)+\n/ }, 10),
   'h2: subscribed over HTTP/2');
$t->idle(0.3);
is(scalar lines('h2'), 0, 'h2: no line while the stream lives');
$t->curl_stop($c);
my $body = Collab::Test::slurp($c->{out});
$l = line_of('h2');
common($l, 'h2', user => 'gina', docs => 'a', code => 1006, status => 200,
       proto => 'HTTP/2.0', bytes => length($body),
       out => scalar(() = $body =~ /^event: /mg));

###########################################################################
# reload: close 1001 to a WebSocket and an event stream, logged by the old
# worker as it lets them go

$ws = $t->ws_session(path => '/collab?doc=r&user=frank&tag=ws3');
my $sid3 = $ws->{welcome}{session};
ok($ws->wait_for({ type => 'subscribed', doc => 'r' }, 5), 'ws3: subscribed');
$sse = $t->sse(path => '/collab?doc=r&tag=sse2');
@ev = sse_all($sse, 'subscribed');
$ws->send_json({ type => 'delta', doc => 'r', id => 'ws3-1', data => 1 });
ok($ws->wait_for({ type => 'ack', id => 'ws3-1' }, 5), 'ws3: delta acked');
ok($sse->wait_event('delta', 5), 'sse2: the delta');
$ws->collect(0.3);
is(scalar(lines('ws3')) + scalar(lines('sse2')), 0, 'reload: no line before it');
$t->reload_nginx(conf => $conf);
is($ws->expect_close(5), 1001, 'ws3: close 1001');
ok($sse->wait_end(5), 'sse2: the stream ends');
$ws->close;
$l = line_of('ws3');
common($l, 'ws3', session => $sid3, user => 'frank', docs => 'r', code => 1001,
       in => 1, out => $ws->{rx_text}, bytes => $ws->{rx_bytes}, status => 101);
$l = line_of('sse2');
common($l, 'sse2', user => 'anonymous', docs => 'r', code => 1001, status => 200);
ok($l->{out} >= 3, "sse2: welcome, subscribed, delta counted ($l->{out})");

###########################################################################
# RSS per idle WebSocket, with and without the request kept (on demand)

if (my $n = $ENV{COLLAB_RSS}) {
    for my $path ('/quiet', '/collab', '/quiet', '/collab') {
        # a fresh worker each time: freed memory is not given back
        $t->stop_nginx;
        $t->start_nginx;
        my ($worker) = $t->worker_pids;
        my @w = map { $t->ws_session(path => "$path?doc=warm&tag=rss") } 1 .. 50;
        $_->close(1000) for @w;
        $t->idle(0.5);
        my $rss0 = $t->rss_kb($worker);
        my @s;
        for my $i (1 .. $n) {
            push @s, $t->ws(path => "$path?doc=rss" . ($i % 100) . "&tag=rss", pump => 0);
        }
        Collab::Test::wait_until(sub { !grep { !$_->ok } @s }, 10);
        $t->idle(1);
        my $rss1 = $t->rss_kb($worker);
        diag(sprintf('%s: %d idle WebSockets, worker RSS %d -> %d kB: %.2f KB each',
            $path, $n, $rss0, $rss1, ($rss1 - $rss0) / $n));
        $_->drop for @s;
        $t->idle(1);
    }
}

$t->done;
done_testing;
