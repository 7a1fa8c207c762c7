#!/usr/bin/perl

# collab_metrics (docs/metrics.md): after a known workload on 2 workers
# (WebSocket and SSE sessions, deltas, a nack, a rate limit, an auth
# failure, closes by code; a resync needs a slow reader or a trimmed log,
# which t/96 and t/103 provoke), the Prometheus text output parses
# with a real parser (parse-prometheus-text-format, t/metrics) and holds
# the exact counts, whichever worker answers; every family has HELP and
# TYPE; the gauges go back to zero once the sessions end; a reload keeps
# the counters (monotonic) and drops the gauges of the exiting workers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IPC::Open2;
use JSON::PP;
use Collab::Test;

my $parser = "$FindBin::Bin/metrics/parse.js";
plan skip_all => 'no t/metrics/node_modules (make t/metrics/node_modules)'
    unless -d "$FindBin::Bin/metrics/node_modules";

my $t = Collab::Test->new(timeout => 120);
$t->start_redis;

my $conf = <<'EOF';
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_auth variable;
        collab_user $arg_user;
        collab_doc $arg_doc;
        collab_default_role editor;
        collab_ping 30s;
        location = /collab { collab; }
        location = /flood { collab; collab_rate 1r/m burst=5; }
        location = /metrics { collab_metrics; }
    }
EOF
$t->write_nginx_conf($conf, workers => 2);
$t->start_nginx;

# the families as the parser gives them (name => family), and the text
sub scrape {
    my $r = $t->http(path => '/metrics');
    return (undef, '') unless ($r->{status} // 0) == 200;
    my $pid = open2(my $out, my $in, 'node', $parser) or die "node: $!";
    print $in $r->{body};
    close $in;
    local $/;
    my $json = <$out>;
    waitpid $pid, 0;
    if ($? >> 8) {
        fail('the parser accepts the output');
        diag $r->{body};
        return (undef, $r->{body});
    }
    my %f = map { $_->{name} => $_ } @{ decode_json($json) };
    return (\%f, $r->{body}, $r);
}

# a sample's value (a histogram's count): family, label => value
sub val {
    my ($f, $name, %l) = @_;
    my $fam = $f && $f->{$name} or return undef;
    SAMPLE: for my $m (@{ $fam->{metrics} }) {
        for my $k (keys %l) {
            next SAMPLE unless ($m->{labels}{$k} // '') eq $l{$k};
        }
        return $fam->{type} eq 'HISTOGRAM' ? $m->{count} + 0 : $m->{value} + 0;
    }
    return undef;
}

sub gauges_zero {
    my ($f) = @_;
    return 0 unless defined $f;
    for my $tr (qw(websocket sse post admin get)) {
        return 0 if val($f, 'collab_connections', transport => $tr) != 0;
    }
    return val($f, 'collab_sessions') == 0 && val($f, 'collab_documents') == 0
        && val($f, 'collab_redis_inflight') == 0;
}

my ($f0, $text0, $r0) = scrape();
ok($f0, 'the parser accepts the output');
like($r0->{headers}{'content-type'} // '', qr{^text/plain; version=0\.0\.4},
     'Content-Type: text/plain; version=0.0.4');
for my $name (sort keys %$f0) {
    like($text0, qr/^# HELP \Q$name\E \S/m, "$name: HELP");
    like($text0, qr/^# TYPE \Q$name\E (counter|gauge|histogram)$/m, "$name: TYPE");
}
ok(gauges_zero($f0), 'gauges start at zero');

# --- the workload

my $a = $t->ws_session(path => '/collab?user=a');
my $b = $t->ws_session(path => '/collab?user=b');
is($t->subscribe($a, 'm')->{type}, 'subscribed', 'a subscribed');
is($t->subscribe($b, 'm')->{type}, 'subscribed', 'b subscribed');
my $sse = $t->sse(path => '/collab?doc=m&user=c');
ok($sse->wait_event('subscribed', 5), 'sse subscribed');

my ($f1) = scrape();
is(val($f1, 'collab_connections', transport => 'websocket'), 2, 'connections{websocket} 2');
is(val($f1, 'collab_connections', transport => 'sse'), 1, 'connections{sse} 1');
is(val($f1, 'collab_sessions'), 3, 'sessions 3');
my $docs = val($f1, 'collab_documents');
ok($docs >= 1 && $docs <= 2, "documents: one per worker that has it open ($docs)");

for my $i (1 .. 3) {
    $a->send_json({ type => 'delta', doc => 'm', id => "d$i", data => { n => $i } });
    ok($a->wait_for({ type => 'ack', id => "d$i" }, 5), "ack d$i");
}
ok($a->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{seq} == 3 }, 5), 'a got seq 3');
ok($b->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{seq} == 3 }, 5), 'b got seq 3');
ok($sse->wait_event(sub { $_[0]{event} eq 'delta' && $_[0]{json}{seq} == 3 }, 5),
   'sse got seq 3');

# a nack: no data
$a->send_json({ type => 'delta', doc => 'm', id => 'bad' });
my $n = $a->wait_for({ type => 'nack', id => 'bad' }, 5);
is($n && $n->{code}, 'invalid', 'nack invalid');

# a rate limit: burst 5 lets 6 deltas pass, the other 4 are nacked
my $fl = $t->ws_session(path => '/flood?user=f');
$fl->send_json({ type => 'delta', doc => 'f', id => "f$_", data => 1 }) for 1 .. 10;
ok($fl->wait_for({ type => 'ack', id => "f$_" }, 5), "flood: ack f$_") for 1 .. 6;
ok($fl->wait_for({ type => 'nack', id => "f$_" }, 5), "flood: nack f$_") for 7 .. 10;

# an auth failure: no identity
my $r = $t->http(path => '/collab?doc=m', headers => ['Accept: text/event-stream']);
is($r->{status}, 401, 'no user: 401');

# a session that only says hello and leaves with 4000
my $e = $t->ws_session(path => '/collab?user=e');

# closes: a and fl by 1000, e by 4000 (other), b dropped and the stream
# closed by the client (1006)
$a->close(1000);
$fl->close(1000);
$e->close(4000);
$b->drop;
$sse->close;

my $f2;
ok(Collab::Test::wait_until(sub { ($f2) = scrape(); gauges_zero($f2) }, 10),
   'gauges back to zero once the sessions ended');

my %want = (
    'collab_messages_in_total{type=subscribe}' => 2,
    'collab_messages_in_total{type=delta}' => 3 + 1 + 10,
    'collab_acks_total' => 3 + 6,
    'collab_messages_out_total{type=ack}' => 9,
    'collab_messages_out_total{type=delta}' => 9,
    'collab_nacks_total{code=invalid}' => 1,
    'collab_nacks_total{code=rate_limited}' => 4,
    'collab_messages_out_total{type=nack}' => 5,
    'collab_rate_limited_total{limit=messages}' => 4,
    'collab_auth_failures_total{reason=missing}' => 1,
    'collab_resyncs_total{reason=epoch}' => 0,
    'collab_messages_out_total{type=resync}' => 0,
    'collab_messages_out_total{type=welcome}' => 5,
    'collab_disconnects_total{code=1000}' => 2,
    'collab_disconnects_total{code=1006}' => 2,
    'collab_disconnects_total{code=other}' => 1,
    'collab_lagging_total' => 0,
    'collab_redis_errors_total' => 0,
    'collab_redis_reconnects_total' => 0,
);

sub check_want {
    my ($f, $what) = @_;
    for my $k (sort keys %want) {
        my ($name, $l) = $k =~ /^(\w+)(?:\{(\w+=\w+)\})?$/;
        my %l = $l ? split(/=/, $l) : ();
        is(val($f, $name, %l), $want{$k}, "$what: $k = $want{$k}");
    }
}

check_want($f2, 'after the workload');

my $cmds = val($f2, 'collab_redis_commands_total');
ok($cmds >= 10, "redis commands counted ($cmds)");
my $lat = val($f2, 'collab_redis_latency_seconds');
ok($lat > 0 && $lat <= $cmds, "redis latency observed per reply ($lat)");
my $fan = val($f2, 'collab_fanout_delay_seconds');
ok($fan >= 3 && $fan <= 6, "fanout delay: once per delta per worker ($fan)");
ok(val($f2, 'collab_replay_entries') >= 3, 'replay entries observed per read');
ok(val($f2, 'collab_limit_zone_slots') > 0, 'limit zone slots');

# whichever worker answers, the same
for (1 .. 4) {
    my ($f) = scrape();
    is(val($f, 'collab_acks_total'), 9, 'any worker: the same acks');
}

# --- a reload: counters go on, the exiting workers' gauges go away

my $h = $t->ws_session(path => '/collab?user=h');
is($t->subscribe($h, 'm')->{type}, 'subscribed', 'h subscribed before the reload');
my ($f3) = scrape();
is(val($f3, 'collab_sessions'), 1, 'sessions 1 before the reload');

$t->reload_nginx;
is($h->expect_close(10), 1001, 'h closed with 1001 by the reload');

my $f4;
ok(Collab::Test::wait_until(sub { ($f4) = scrape(); gauges_zero($f4) }, 15),
   'after the reload: the old workers\' gauges are gone');
$want{'collab_messages_in_total{type=subscribe}'}++;
$want{'collab_messages_out_total{type=welcome}'}++;
$want{'collab_messages_out_total{type=delta}'} += 3;    # h's replay
$want{'collab_disconnects_total{code=1001}'} = 1;
check_want($f4, 'after the reload');

my $g = $t->ws_session(path => '/collab?user=g');
is($t->subscribe($g, 'm')->{type}, 'subscribed', 'g subscribed after the reload');
my ($f5) = scrape();
is(val($f5, 'collab_sessions'), 1, 'the new workers count their sessions');
is(val($f5, 'collab_messages_in_total', type => 'subscribe'),
   $want{'collab_messages_in_total{type=subscribe}'} + 1,
   'the counters go on after the reload');
$g->close(1000);

$t->done;
done_testing;
