#!/usr/bin/perl

# HTTP/2 (`listen ... ssl http2`, how browsers reach most edges), driven by
# curl --http2: an event stream over h2, Last-Event-ID resume, 7 concurrent
# streams on one connection, a WebSocket attempt over h2 answered 400, POST
# over h2, HTTP reads (state, deltas, 304), a stream reset by the client
# frees its session at once (seen from outside through
# collab_max_sessions_per_doc 1), many streams closing together.  The WebSocket writers speak HTTP/1.1 over TLS on the same port
# (no ALPN).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";
use Test::More;
use Time::HiRes qw(time);
use Collab::Test;
use Collab::H2;

my $t = Collab::Test->new(timeout => 120, tls => 1, http2 => 1);
$t->start_redis;
$t->write_nginx_conf(<<'EOF', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_limit_zone 1m;
    log_format h2 '$connection $server_protocol $status $request_uri';
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%DIR%%/h2.log h2;
        collab_ping 30s;
        collab_rate off;
        client_max_body_size 4m;
        location = /collab {
            collab;
            collab_doc $arg_doc;
        }
        location = /one {
            collab;
            collab_doc $arg_doc;
            collab_max_sessions_per_doc 1;
        }
        location = /many {
            collab;
            collab_doc $arg_doc;
            collab_max_sessions_per_doc 50;
        }
    }
EOF
$t->start_nginx;

my $BASE = 'https://127.0.0.1:' . $t->port;
my @SSE = ('--http2', '-N', '-H', 'Accept: text/event-stream');

# the events in a curl output file: [{event, id, data, json}]
sub events {
    my ($file) = @_;
    my $text = Collab::Test::_slurp($file);
    $text =~ s/\r\n?/\n/g;
    my @ev;
    for my $block (split /\n\n/, $text) {
        next unless $block =~ /\S/ && $text =~ /\Q$block\E\n\n/;    # complete ones
        my %e;
        for my $l (split /\n/, $block) {
            next if $l =~ /^:/;
            my ($f, $v) = $l =~ /^([^:]*):?\s?(.*)$/;
            $e{$f} = $f eq 'data' && defined $e{data} ? "$e{data}\n$v" : $v;
        }
        next unless defined $e{data};
        $e{event} //= 'message';
        $e{json} = eval { Collab::Test::json_decode($e{data}) };
        push @ev, \%e;
    }
    return @ev;
}

sub delta_seqs { join ',', map { $_->{json}{seq} } grep { $_->{event} eq 'delta' } events($_[0]) }

# waits until $cond->() holds (the WebSockets keep answering meanwhile)
sub until_ok { Collab::Test::wait_until($_[0], $_[1] // 5, 0.02) }

my $w = $t->ws_session;
sub delta {
    my ($doc, $id) = @_;
    $w->send_json({ type => 'delta', doc => $doc, id => $id, data => { id => $id } });
    my $a = $w->wait_for({ id => $id }, 5);
    return $a && $a->{type} eq 'ack' ? $a->{seq} : undef;
}

###########################################################################
# an event stream over h2

my $c = $t->curl_start(@SSE, '-D', "$t->{dir}/h2-head", "$BASE/collab?doc=h2");
ok(until_ok(sub { grep { $_->{event} eq 'subscribed' } events($c->{out}) }), 'h2: subscribed event');
my $head = Collab::Test::_slurp("$t->{dir}/h2-head");
like($head, qr{^HTTP/2 200}, 'h2: HTTP/2 200');
like($head, qr{^content-type: text/event-stream}mi, 'h2: text/event-stream');
unlike($head, qr{^transfer-encoding}mi, 'h2: no Transfer-Encoding (h2 frames the stream)');
my ($sub) = grep { $_->{event} eq 'subscribed' } events($c->{out});
my $epoch = $sub->{json}{epoch};
delta('h2', "d$_") for 1 .. 3;
ok(until_ok(sub { delta_seqs($c->{out}) eq '1,2,3' }), 'h2: deltas 1..3 stream as they come')
    or diag delta_seqs($c->{out});
is(join(',', map { $_->{id} } grep { $_->{event} eq 'delta' } events($c->{out})),
    "$epoch:1,$epoch:2,$epoch:3", 'h2: id EPOCH:SEQ');
$t->curl_stop($c);

# resume
$c = $t->curl_start(@SSE, '-H', "Last-Event-ID: $epoch:1", "$BASE/collab?doc=h2");
ok(until_ok(sub { delta_seqs($c->{out}) eq '2,3' }), 'h2: Last-Event-ID replays 2,3')
    or diag delta_seqs($c->{out});
($sub) = grep { $_->{event} eq 'subscribed' } events($c->{out});
ok($sub && !exists $sub->{json}{state}, 'h2: no state when resuming');
delta('h2', 'd4');
ok(until_ok(sub { delta_seqs($c->{out}) eq '2,3,4' }), 'h2: then live deltas');
$t->curl_stop($c);

###########################################################################
# 7 concurrent streams on one connection

{
    my @args = ('--parallel', '--parallel-max', '7', @SSE);
    push @args, "$BASE/collab?doc=h2&n=$_", '-o', "$t->{dir}/par-$_" for 1 .. 7;
    $c = $t->curl_start(@args);
    my @files = map { "$t->{dir}/par-$_" } 1 .. 7;
    ok(until_ok(sub { 7 == grep { my $f = $_; grep { $_->{event} eq 'subscribed' } events($f) } @files }, 10),
        '7 streams subscribed');
    delta('h2', 'd5');
    ok(until_ok(sub { 7 == grep { delta_seqs($_) =~ /(^|,)5$/ } @files }),
        'a delta reaches all 7 streams');
    $t->curl_stop($c);
    my @log;
    until_ok(sub { @log = grep { /n=\d/ } split /\n/, Collab::Test::_slurp("$t->{dir}/h2.log"); @log >= 7 });
    my %conn = map { (split / /)[0] => 1 } @log;
    is(scalar @log, 7, '7 requests logged');
    is(scalar keys %conn, 1, 'all 7 on one connection') or diag join "\n", @log;
    ok(!grep({ !/ HTTP\/2\.0 / } @log), 'all HTTP/2.0');
}

###########################################################################
# a WebSocket attempt over h2

{
    my ($rc, $out) = $t->curl('--http2', '-o', '/dev/null', '-w', '%{http_code} %{http_version}',
        '-H', 'Upgrade: websocket', '-H', 'Sec-WebSocket-Version: 13',
        '-H', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
        '-H', 'Sec-WebSocket-Protocol: collab.v1', "$BASE/collab?doc=h2");
    is($out, '400 2', 'a WebSocket attempt over h2: 400');
}

###########################################################################
# POST over h2

{
    my $body = Collab::Test::json_encode([map { { type => 'delta', doc => 'h2post', id => "p$_",
        data => { n => $_, pad => 'q' x 2000 } } } 1 .. 100]);
    open my $fh, '>', "$t->{dir}/post.json" or die $!;
    print $fh $body;
    close $fh;
    my ($rc, $out) = $t->curl('--http2', '-H', 'Content-Type: application/json',
        '--data-binary', "\@$t->{dir}/post.json", '-w', '\n%{http_code} %{http_version}',
        "$BASE/collab");
    my ($json, $status) = $out =~ /\A(.*)\n(\d+ [\d.]+)\z/s;
    is($status, '200 2', 'POST over h2: 200');
    my $list = eval { Collab::Test::json_decode($json // '') } || [];
    is(scalar(grep { $_->{type} eq 'ack' } @$list), 100, 'POST over h2: 100 deltas of 2 KB acked (a 200 KB body)');
    is($t->log_len('h2post'), 100, 'and stored');
}

###########################################################################
# HTTP reads over h2: the state, a page of deltas, 304 on the ETag

{
    delta('h2read', "r$_") for 1 .. 3;
    my ($rc, $out) = $t->curl('--http2', '-i', "$BASE/collab?doc=h2read&view=deltas&since=1");
    like($out, qr{\AHTTP/2 200}, 'a read over h2: 200');
    my ($etag) = $out =~ /^etag: ("[^"]+")/mi;
    my ($body) = $out =~ /\r?\n\r?\n(.*)\z/s;
    my $page = eval { Collab::Test::json_decode($body // '') } || {};
    is(join(',', map { $_->{seq} } @{ $page->{deltas} || [] }), '2,3', 'its deltas');
    ok($etag, 'with an ETag');
    ($rc, $out) = $t->curl('--http2', '-o', '/dev/null', '-w', '%{http_code} %{http_version}',
        '-H', "If-None-Match: $etag", "$BASE/collab?doc=h2read&view=deltas&since=1");
    is($out, '304 2', 'If-None-Match over h2: 304');
    ($rc, $out) = $t->curl('--http2', "$BASE/collab?doc=h2read&view=state");
    is(eval { Collab::Test::json_decode($out)->{seq} }, 0, 'the state over h2');
}

###########################################################################
# a stream reset by the client frees its session at once
# (Collab::H2: curl 7.88 does not reset a stream whose --max-time is up)

my @ACCEPT = (accept => 'text/event-stream');

# the first event of a new stream on $path: 'subscribed', 'error:CODE', ...
sub first_event {
    my ($h, $path) = @_;
    my $id = $h->get($path, @ACCEPT);
    my $e;
    $h->wait(sub { ($e) = grep { $_->{event} ne 'welcome' } $h->events($id); $e || $h->ended($id) }, 5);
    $h->reset($id) unless $h->ended($id);
    return 'nothing' unless $e;
    return $e->{event} . ($e->{json}{code} ? ":$e->{json}{code}" : '');
}

{
    my $h = Collab::H2->new(port => $t->port);
    my $keep = $h->get('/collab?doc=keep', @ACCEPT);
    my $one = $h->get('/one?doc=one', @ACCEPT);
    ok($h->wait(sub { $h->has_event($one, 'subscribed') }), 'a stream on "one" (limit 1)');
    ok($h->wait(sub { $h->has_event($keep, 'subscribed') }), 'and one that stays, on the same connection');
    is(first_event($h, '/one?doc=one'), 'collab-error:rate_limited',
        'while it is open, another session on "one" is refused');
    $h->reset($one);
    my $reset_at = time;
    my $got = Collab::Test::wait_until(sub { first_event($h, '/one?doc=one') eq 'subscribed' }, 3, 0.01);
    my $dt = time - $reset_at;
    ok($got, sprintf('after RST_STREAM, a new session on "one" is accepted (%.0f ms)', $dt * 1000));
    ok($dt < 0.5, 'at once');
    ok($t->grep_error_log(qr/client canceled stream|RST_STREAM frame, sid:\d+ status:8/), 'nginx saw the reset');
    delta('keep', 'k1');
    ok($h->wait(sub { grep { $_->{event} eq 'delta' } $h->events($keep) }), 'the other stream of the connection goes on');
    ok(!$h->is_eof, 'the connection stays');
    $h->close;
}

###########################################################################
# many streams closing together

for my $how ('reset together', 'connection closed') {
    my $n = 50;
    my $h = Collab::H2->new(port => $t->port);
    my @ids = map { $h->get("/many?doc=many&n=$_", @ACCEPT) } 1 .. $n;
    my $subscribed = sub { scalar grep { $h->has_event($_, 'subscribed') } @ids };
    ok($h->wait(sub { $subscribed->() == $n }, 10), "$how: $n streams on one connection subscribed")
        or diag $subscribed->();
    is(first_event($h, '/many?doc=many'), 'collab-error:rate_limited', "$how: the ${\($n + 1)}st is refused");
    my $t0 = time;
    if ($how eq 'reset together') {
        $h->reset(@ids);    # 50 RST_STREAM frames in one write
    } else {
        $h->close;
    }
    # their places are free: $n new streams are all accepted
    my $h2 = Collab::H2->new(port => $t->port);
    my @again;
    my $ok = Collab::Test::wait_until(sub {
        $h2->reset(grep { !$h2->ended($_) } @again) if @again;
        @again = map { $h2->get("/many?doc=many&m=$_", @ACCEPT) } 1 .. $n;
        $h2->wait(sub { (grep { $h2->ended($_) || $h2->has_event($_, 'subscribed') } @again) == $n }, 5);
        (grep { $h2->has_event($_, 'subscribed') } @again) == $n;
    }, 3, 0.01);
    ok($ok, sprintf("$how: then $n new streams are all accepted (%.0f ms)", (time - $t0) * 1000));
    if ($how eq 'reset together') {
        delta('many', "m-$how");
        ok(!$h->is_eof, "$how: the connection of the reset streams stays");
        $h->close;
    }
    $h2->close;
}
my $after = $t->sse(path => '/collab?doc=h2');
ok($after->wait_event('subscribed', 5), 'nginx still serves event streams');
delta('h2', 'd6');
ok($after->wait_event('delta', 5), 'and deltas');
$after->close;
$w->close(1000);

$t->done;
done_testing;
