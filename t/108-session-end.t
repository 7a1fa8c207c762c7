#!/usr/bin/perl

# Every way a WebSocket or an event stream ends, seen by the operator twice:
# $collab_close_code in the access log line and collab_disconnects_total
# (docs/directives.md, docs/metrics.md).  Both say the same code for the
# same session, each session counts once, and the connection and session
# gauges are back to zero after each: client close 1000 and 4000, TCP drop,
# an event stream the client leaves, HTTP/2 RST_STREAM, auth timeout 4408,
# too many sessions 4429, a slow consumer 1008, an event stream the server
# ends for an error (no role on its document: 1011), a reload 1001.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;
use Collab::H2;

my $t = Collab::Test->new(timeout => 180);
$t->start_redis;
$t->jwt_keys;

my $conf = <<'EOF';
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_limit_zone 1m;
    log_format ends 'tag=$arg_tag code=$collab_close_code';
    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT2%% ssl http2;
        ssl_certificate %%SSL_CERT%%;
        ssl_certificate_key %%SSL_KEY%%;
        collab_ping 30s;
        client_max_body_size 4m;
        access_log %%TESTDIR%%/ends.log ends;
        location = /collab {
            collab;
            collab_doc $arg_doc;
            collab_user $arg_user;
        }
        location = /none {
            collab;
            collab_doc $arg_doc;
            collab_user $arg_user;
            collab_default_role none;
        }
        location = /small {
            collab;
            collab_send_queue 64k;
        }
        location = /wide {
            collab;
            collab_max_message 512k;
            collab_send_queue 512k;
        }
        location = /jwt {
            collab;
            collab_auth jwt;
            collab_auth_timeout 1s;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
            collab_max_sessions_per_user 1;
        }
        location = /metrics {
            collab_metrics;
            access_log off;
        }
    }
EOF
$t->write_nginx_conf($conf, workers => 1);
$t->start_nginx;

my $LOG = $t->dir . '/ends.log';

# the metrics this file looks at: {code => n} of the disconnects, gauges
sub scrape {
    my $r = $t->http(path => '/metrics');
    my %m;
    for (split /\n/, $r->{body} // '') {
        $m{"d:$1"} = $2 if /^collab_disconnects_total\{code="(\w+)"\} (\d+)$/;
        $m{"c:$1"} = $2 if /^collab_connections\{transport="(\w+)"\} (\d+)$/;
        $m{sessions} = $1 if /^collab_sessions (\d+)$/;
    }
    return \%m;
}

sub idle_gauges {
    my ($m) = @_;
    return !grep { $m->{$_} } 'c:websocket', 'c:sse', 'sessions';
}

sub codes_of {
    my ($tag) = @_;
    return map { /^tag=\Q$tag\E code=(\S+)$/ ? $1 : () }
           split /\n/, Collab::Test::slurp($LOG);
}

# the session tagged $tag ends (by $end): one log line, one disconnect,
# the same code, the gauges back to zero
sub ends_with {
    my ($tag, $want, $end) = @_;
    my $before = scrape();
    $end->();
    ok(Collab::Test::wait_until(sub { codes_of($tag) }, 10, 0.05),
       "$tag: a log line");
    my @codes = codes_of($tag);
    is("@codes", $want, "$tag: \$collab_close_code $want");
    my $after;
    ok(Collab::Test::wait_until(sub { $after = scrape(); idle_gauges($after) }, 10),
       "$tag: connections and sessions back to 0")
        or diag explain $after;
    my %d = map { /^d:(\w+)$/ ? ($1 => $after->{$_} - ($before->{$_} // 0)) : () }
            keys %$after;
    my @moved = grep { $d{$_} } sort keys %d;
    my $label = (grep { $_ eq $want } keys %d) ? $want : 'other';
    is(join(',', map { "$_+$d{$_}" } @moved), "$label+1",
       "$tag: collab_disconnects_total{code=$label} +1, nothing else");
}

ok(idle_gauges(scrape()), 'gauges at 0');

# --- the client ends it

my $ws = $t->ws_session(path => '/collab?doc=a&user=u&tag=ws1000');
ok($ws->wait_for({ type => 'subscribed', doc => 'a' }, 5), 'ws1000: subscribed');
ends_with('ws1000', 1000, sub { $ws->close(1000) });

$ws = $t->ws_session(path => '/collab?doc=a&user=u&tag=ws4000');
ends_with('ws4000', 4000, sub { $ws->close(4000) });

$ws = $t->ws_session(path => '/collab?doc=a&user=u&tag=wsdrop');
ok($ws->wait_for({ type => 'subscribed', doc => 'a' }, 5), 'wsdrop: subscribed');
ends_with('wsdrop', 1006, sub { $ws->drop });

my $sse = $t->sse(path => '/collab?doc=a&user=u&tag=sse');
ok($sse->wait_event('subscribed', 5), 'sse: subscribed');
ends_with('sse', 1006, sub { $sse->close });

my $h = Collab::H2->new(port => $t->port2);
my $id = $h->get('/collab?doc=a&user=u&tag=h2rst', accept => 'text/event-stream');
ok($h->wait(sub { $h->has_event($id, 'subscribed') }, 5), 'h2rst: subscribed');
ends_with('h2rst', 1006, sub { $h->reset($id); $h->pump(0.2) });
$h->close;

# --- the server ends it

$ws = $t->ws(path => '/jwt?tag=authtimeout');
ends_with('authtimeout', 4408, sub { $ws->expect_close(5) });

my $tok = $t->jwt(claims => { sub => 'one', exp => int(time) + 300 });
my $first = $t->ws(path => '/jwt?tag=first', headers => ["Authorization: Bearer $tok"]);
ok($first->wait_for('welcome', 5), 'first: welcome');
$ws = $t->ws(path => '/jwt?tag=toomany');
$ws->send_json({ type => 'auth', token => $tok });
my $before = scrape();
is($ws->expect_close(5), 4429, 'toomany: close 4429');
ok(Collab::Test::wait_until(sub { codes_of('toomany') }, 10, 0.05), 'toomany: a line');
is(join(' ', codes_of('toomany')), '4429', 'toomany: $collab_close_code 4429');
ok(Collab::Test::wait_until(sub { (scrape()->{'d:4429'} // 0) == ($before->{'d:4429'} // 0) + 1 }, 5),
   'toomany: collab_disconnects_total{code=4429} +1');
ends_with('first', 1000, sub { $first->close(1000) });

# a subscribed message over twice the send queue (t/96): 1008
my $r = $t->post('/wide', [{ type => 'delta', doc => 'big', id => 'b1', data => 1 },
                           { type => 'state', doc => 'big', seq => 1, data => 'S' x 200_000 }]);
is($r->{status}, 200, 'a 200 KB state stored');
$ws = $t->ws_session(path => '/small?tag=slow');
ends_with('slow', 1008, sub {
    $ws->send_json({ type => 'subscribe', doc => 'big' });
    $ws->expect_close(5);
});

# an event stream the server ends for an error: no role on its document
# (the error is its last event)
ends_with('ssenone', 1011, sub {
    my $e = $t->sse(path => '/none?doc=a&user=u&tag=ssenone');
    $e->wait_end(5);
});

# --- a reload
$ws = $t->ws_session(path => '/collab?doc=a&user=u&tag=reload');
ok($ws->wait_for({ type => 'subscribed', doc => 'a' }, 5), 'reload: subscribed');
ends_with('reload', 1001, sub {
    $t->reload_nginx(conf => $conf);
    $ws->expect_close(5);
});

$t->done;
done_testing;
