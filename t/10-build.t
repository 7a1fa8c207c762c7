#!/usr/bin/perl

# The module is built, is a loadable nginx module, and nginx runs with it
# loaded, with and without collab locations.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $module = Collab::Test::module_path();

ok(-f $module, "module built: $module")
    or BAIL_OUT("no $module: run `make build` before the tests");

my $file = `file -L '$module' 2>/dev/null`;
like($file, qr/ELF .*shared object/, 'an ELF shared object') if $file;

my $syms = `nm -D --defined-only '$module' 2>/dev/null`;
SKIP: {
    skip 'nm not available', 2 unless $syms;
    like($syms, qr/\bngx_http_collab_module\b/, 'exports ngx_http_collab_module');
    like($syms, qr/\bngx_modules\b/, 'exports ngx_modules (dynamic module)');
}

my $ldd = `ldd '$module' 2>&1`;
unlike($ldd, qr/not found/, 'all shared libraries resolve') or diag $ldd;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;

# loaded, but no collab location and no collab_redis: must be harmless
$t->write_nginx_conf(<<'EOF2');
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { return 200 "plain\n"; }
    }
EOF2
my ($rc, $out) = $t->check_nginx_conf(<<'EOF2');
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { return 200 "plain\n"; }
    }
EOF2
is($rc, 0, 'nginx -t with the module loaded and no collab config') or diag $out;

$t->start_nginx;
my $r = $t->http(path => '/');
is($r->{status}, 200, 'plain location served with the module loaded');
is($r->{body}, "plain\n", 'body');
ok($t->quit_nginx, 'quit without collab config');

# a full collab configuration: starts, serves, reloads, quits
$t->write_nginx_conf(<<'EOF2', workers => 2);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab { collab; collab_doc $arg_doc; }
        location / { return 200 "plain\n"; }
    }
EOF2
$t->start_nginx;
my @pids = $t->nginx_pids;
is(scalar @pids, 3, 'master + 2 workers');
if ($ENV{COLLAB_ASAN}) {
    open my $fh, '<', "/proc/$pids[1]/maps";
    my $maps = do { local $/; <$fh> } // '';
    like($maps, qr/libasan/, 'COLLAB_ASAN=1: the AddressSanitizer runtime is loaded in the workers');
}
my $ws = $t->ws;
is($ws->status, 101, 'websocket handshake works') or diag $ws->status_line;
$ws->drop;
is($t->http(path => '/')->{status}, 200, 'other locations unaffected');
my @old = $t->reload_nginx;
ok(Collab::Test::wait_until(sub { !grep { $t->pid_alive($_) } @old }, 10),
    'old workers exit after reload');
is($t->http(path => '/')->{status}, 200, 'serving after reload');

$t->done;
done_testing;
