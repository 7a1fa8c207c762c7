#!/usr/bin/perl

# Configuration: `nginx -t` accepts valid collab configurations and refuses
# bad ones with a clear [emerg] naming the directive.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 120);

sub conf {
    my ($http_extra, $loc, $main_redis) = @_;
    $main_redis //= 'collab_redis 127.0.0.1:6379;';
    return <<"EOF";
    $main_redis
    $http_extra
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            $loc
        }
    }
EOF
}

sub good {
    my ($name, $conf) = @_;
    my ($rc, $out) = $t->check_nginx_conf($conf);
    is($rc, 0, "valid: $name") or diag $out;
    like($out, qr/test is successful/, "valid: $name: test is successful") if $rc == 0;
}

# ASSUMPTION: "clear" = [emerg] + nginx.conf:LINE + the directive or the
# offending value.
# @re: what the message must mention besides [emerg]: the directive or the
# offending value (nginx's stock slot messages, e.g. `invalid value "x" in
# FILE:LINE`, name only the value; with the line that is clear enough), and
# the file:line of the offending directive unless no_line => 1 is passed
sub bad {
    my ($name, $conf, @re) = @_;
    my %o = ref $re[-1] eq 'HASH' ? %{ pop @re } : ();
    my ($rc, $out) = $t->check_nginx_conf($conf);
    isnt($rc, 0, "refused: $name");
    like($out, qr/\[emerg\]/, "$name: [emerg]") or diag $out;
    like($out, qr/nginx\.conf:\d+/, "$name: points at nginx.conf:LINE") or diag $out
        unless $o{no_line};
    for my $re (@re) {
        like($out, $re, "$name: message matches $re") or diag $out;
    }
    unlike($out, qr/AddressSanitizer|Segmentation|core dumped/, "$name: no crash");
}

# --- valid
good('minimal', conf('', ''));

# collab_metrics: a location of its own, no arguments, once
sub metrics_conf {
    my ($loc) = @_;
    return conf("server { listen 127.0.0.1:%%PORT2%%; location = /m { $loc } }", '');
}
good('collab_metrics', metrics_conf('collab_metrics;'));
bad('collab_metrics with an argument', metrics_conf('collab_metrics on;'), qr/collab_metrics/);
bad('collab_metrics twice', metrics_conf('collab_metrics; collab_metrics;'),
    qr/collab_metrics.*is duplicate/);
bad('collab_metrics after collab', metrics_conf('collab; collab_metrics;'),
    qr/collab_metrics.*conflicts/);
bad('collab after collab_metrics', metrics_conf('collab_metrics; collab;'),
    qr/"collab".*conflicts/);
bad('collab_admin after collab_metrics', metrics_conf('collab_metrics; collab_admin;'),
    qr/collab_admin.*conflicts/);
bad('collab after collab_admin', metrics_conf('collab_admin; collab;'),
    qr/"collab".*conflicts/);
bad('collab_metrics at http level', conf('', '', 'collab_redis 127.0.0.1:6379; collab_metrics;'),
    qr/collab_metrics.*not allowed/);
good('every directive', conf('', <<'EOF', 'collab_redis 127.0.0.1:6379 password=secret db=2 timeout=3s connect_timeout=500ms;'));
            collab_doc $arg_doc;
            collab_user $remote_user;
            collab_auth variable;
            collab_allow_origin https://app.example.com *.example.org;
            collab_max_message 128k;
            collab_max_docs 32;
            collab_send_queue 1m;
            collab_ping 10s;
            collab_merge none;
            collab_conflict reject-stale;
            collab_rate 50r/s burst=100;
EOF
good('collab_auth off', conf('', 'collab_auth off;'));
good('collab_merge json-merge', conf('', 'collab_merge json-merge; collab_state_max 1m;'));
good('collab_rate without burst', conf('', 'collab_rate 10r/s;'));
good('directives inherited from http level', conf('collab_max_docs 4; collab_ping 5s;', ''));
# ASSUMPTION: a unix socket path is not checked at configuration time
good('unix socket address', conf('', '', 'collab_redis unix:/nonexistent/redis.sock;'));
good('host name resolved at configuration time', conf('', '', 'collab_redis localhost:6379;'));
good('collab_redis without any collab location', <<'EOF');
    collab_redis 127.0.0.1:6379;
    server { listen 127.0.0.1:%%PORT%%; location / { return 204; } }
EOF

# --- collab_auth
bad('unknown collab_auth mode', conf('', 'collab_auth magic;'), qr/collab_auth|"magic"/);

# --- sizes and numbers
bad('bad size for collab_max_message', conf('', 'collab_max_message 12q;'), qr/collab_max_message/);
bad('non-numeric collab_max_message', conf('', 'collab_max_message big;'), qr/collab_max_message/);
bad('bad size for collab_send_queue', conf('', 'collab_send_queue lots;'), qr/collab_send_queue/);
bad('non-numeric collab_max_docs', conf('', 'collab_max_docs many;'), qr/collab_max_docs/);
bad('collab_max_docs 0', conf('', 'collab_max_docs 0;'), qr/collab_max_docs|between 1 and/);
bad('bad time for collab_ping', conf('', 'collab_ping soon;'), qr/collab_ping/);
bad('unknown collab_merge', conf('', 'collab_merge crdt-magic;'), qr/collab_merge|"crdt-magic"/);
bad('collab_state_max 0', conf('', 'collab_state_max 0;'), qr/collab_state_max/);
bad('collab_state_max over 16m', conf('', 'collab_state_max 17m;'), qr/collab_state_max/);
bad('unknown collab_conflict', conf('', 'collab_conflict last-wins;'), qr/collab_conflict|"last-wins"/);
bad('bad collab_rate', conf('', 'collab_rate fast;'), qr/collab_rate|"fast"/);
bad('bad collab_rate burst', conf('', 'collab_rate 10r/s burst=x;'), qr/collab_rate|burst/);
bad('collab_rate with an unknown parameter', conf('', 'collab_rate 10r/s nodelay=1;'), qr/collab_rate|nodelay/);

# --- collab_redis
bad('collab_redis port not a number', conf('', '', 'collab_redis 127.0.0.1:notaport;'), qr/collab_redis|notaport|port/);
bad('collab_redis port out of range', conf('', '', 'collab_redis 127.0.0.1:70000;'), qr/collab_redis|70000|port/);
bad('collab_redis empty host', conf('', '', 'collab_redis :6379;'), qr/collab_redis|host/);
bad('collab_redis unresolvable host', conf('', '', 'collab_redis no-such-host.invalid:6379;'),
    qr/collab_redis|no-such-host\.invalid/);
bad('collab_redis unknown parameter', conf('', '', 'collab_redis 127.0.0.1:6379 frobnicate=1;'),
    qr/collab_redis|frobnicate/);
bad('collab_redis bad timeout', conf('', '', 'collab_redis 127.0.0.1:6379 timeout=abc;'),
    qr/collab_redis|timeout/);
bad('collab_redis bad db', conf('', '', 'collab_redis 127.0.0.1:6379 db=x;'), qr/collab_redis|db/);
bad('collab_redis twice', conf('collab_redis 127.0.0.1:6380;', ''), qr/collab_redis/, qr/duplicate/);
bad('collab_redis in a server block', <<'EOF', qr/collab_redis/, qr/not allowed here/);
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_redis 127.0.0.1:6379;
        location = /collab { collab; }
    }
EOF
bad('a collab location without collab_redis', conf('', '', '# no collab_redis'), qr/collab_redis/,
    { no_line => 1 });

# --- collab itself
bad('collab with an argument', conf('', '') =~ s/collab;/collab on;/r, qr/"collab"/);
bad('collab in a server block', <<'EOF', qr/"collab"/, qr/not allowed here/);
    collab_redis 127.0.0.1:6379;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab;
    }
EOF
bad('collab_doc without a value', conf('', 'collab_doc;'), qr/collab_doc/, qr/number of arguments/);

# errors point at the line of the configuration file
my ($rc, $out) = $t->check_nginx_conf(conf('', 'collab_auth magic;'));
like($out, qr/nginx\.conf:\d+/, 'the error names nginx.conf:LINE');

$t->done;
done_testing;
