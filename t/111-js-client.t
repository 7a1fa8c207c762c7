#!/usr/bin/perl

# The npm package clients/js against the real module: runs its node:test files
# (clients/js/test/*.test.mjs, with the `ws` package as Node 20's WebSocket) against
# redis + nginx started here, one TAP result per node test. The locations:
#   /collab   collab_auth off, the user from ?user=
#   /jwt      collab_auth jwt (HS256, the secret in COLLAB_JWT_KEY), leeway 0
#   /nows     like /collab, but a WebSocket upgrade is refused (403): SSE + POST only
#   /merge    collab_merge json-merge
#   /stale    collab_conflict reject-stale
#   /acl      collab_admin with the key in COLLAB_ADMIN_KEY
# Also checks that www/collab.js is the package's current script-tag build.
#
# Needs node >= 20 and npm (`make test` runs `npm ci` in clients/js). Bounded to 90 s.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX qw(WNOHANG);
use Collab::Test;

my $LIMIT = 90;
my $T0 = time;
my $PKG = "$Collab::Test::REPO/clients/js";

sub which {
    my ($prog) = @_;
    for my $d (split /:/, $ENV{PATH} // '') {
        return "$d/$prog" if length $d && -f "$d/$prog" && -x _;
    }
    return undef;
}

my $node = which('node') // which('nodejs');
plan skip_all => 'node is not installed (`make deps` installs nodejs)' unless $node;
my $node_version = `$node --version 2>/dev/null` // '';
plan skip_all => "node >= 20 is needed, found '" . ($node_version =~ s/\s+$//r) . "'"
    unless $node_version =~ /^v(\d+)\./ && $1 >= 20;
my $have_modules = -f "$PKG/node_modules/ws/package.json";
plan skip_all => 'npm is not installed and clients/js/node_modules is missing'
    unless $have_modules || which('npm');

my $t = Collab::Test->new(timeout => $LIMIT);
my $dir = $t->dir;

sub run_bounded {
    my (%o) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        POSIX::setpgid(0, 0);
        if ($o{cwd}) { chdir $o{cwd} or POSIX::_exit(126) }
        @ENV{ keys %{ $o{env} || {} } } = values %{ $o{env} || {} };
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $o{out} or POSIX::_exit(126);
        open STDERR, '>', $o{err} or POSIX::_exit(126);
        exec(@{ $o{cmd} }) or POSIX::_exit(127);
    }
    local $Collab::Test::KILL_AT_END{$pid} = 1;
    my $deadline = time + $o{timeout};
    while (time < $deadline) {
        return $? >> 8 if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    kill 'KILL', -$pid;
    kill 'KILL', $pid;
    waitpid($pid, 0);
    return -1;
}

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return scalar <$fh>;
}

sub tail_of { my @l = split /\n/, $_[0]; join "\n", @l[($#l > 30 ? $#l - 30 : 0) .. $#l] }

if (!$have_modules) {
    my $rc = run_bounded(cmd => ['npm', 'ci', '--no-audit', '--no-fund', '--loglevel=error'],
        cwd => $PKG, out => "$dir/npm.out", err => "$dir/npm.err", timeout => 25);
    ok($rc == 0 && -f "$PKG/node_modules/ws/package.json", 'npm ci in clients/js installed ws')
        or diag tail_of(slurp("$dir/npm.out") . slurp("$dir/npm.err"));
}

# --- www/collab.js is the current build of the package
{
    my $rc = run_bounded(cmd => [$node, "$PKG/scripts/build.mjs", '--out', "$dir/collab.js"],
        out => "$dir/build.out", err => "$dir/build.err", timeout => 20);
    is($rc, 0, 'the script-tag build runs') or diag slurp("$dir/build.err");
    ok(slurp("$dir/collab.js") eq slurp("$Collab::Test::REPO/www/collab.js"),
        'www/collab.js is the current build of clients/js (make www/collab.js)');
}

my $k = $t->jwt_keys;
my $admin_key = 'js-client-admin-key-' . ('k' x 16);
{
    open my $fh, '>', "$dir/admin.key" or die "admin.key: $!";
    print $fh $admin_key;
    close $fh;
}
$t->start_redis;
$t->write_nginx_conf(<<"EOF", workers => 2);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /collab {
            collab;
            collab_doc  \$arg_doc;
            collab_user \$arg_user;
        }

        location = /jwt {
            collab;
            collab_doc  \$arg_doc;
            collab_auth jwt;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
            collab_jwt_leeway 0s;
            collab_default_role editor;
        }

        location = /nows {
            if (\$http_upgrade) {
                return 403;
            }
            collab;
            collab_doc  \$arg_doc;
            collab_user \$arg_user;
        }

        location = /merge {
            collab;
            collab_doc   \$arg_doc;
            collab_user  \$arg_user;
            collab_merge json-merge;
        }

        location = /acl {
            collab_admin;
            collab_admin_key file=%%TESTDIR%%/admin.key;
        }

        location = /stale {
            collab;
            collab_doc  \$arg_doc;
            collab_user \$arg_user;
            collab_conflict reject-stale;
        }
    }
EOF
$t->start_nginx;

# COLLAB_JS_TESTS="a b": only clients/js/test/a.test.mjs and b.test.mjs
my @files = $ENV{COLLAB_JS_TESTS}
    ? map { "$PKG/test/$_.test.mjs" } split ' ', $ENV{COLLAB_JS_TESTS}
    : sort glob("$PKG/test/*.test.mjs");
ok(@files >= ($ENV{COLLAB_JS_TESTS} ? 1 : 5), scalar(@files) . ' test files');
my $budget = int($LIMIT - (time - $T0) - 8);
my $t_run = time;
my $rc = run_bounded(
    cmd => [$node, '--test', '--test-concurrency=1', '--test-timeout=60000',
            "--test-reporter=$PKG/test/reporter.mjs", @files],
    cwd => $PKG,
    env => { COLLAB_HTTP => 'http://127.0.0.1:' . $t->port,
             COLLAB_JWT_KEY => $k->{hs256},
             COLLAB_REDIS_PORT => $t->redis_port,
             COLLAB_ADMIN_KEY => $admin_key },
    out => "$dir/node.out", err => "$dir/node.err", timeout => $budget);
my $secs = time - $t_run;
my $out = slurp("$dir/node.out");
my $checks = 0;
for my $l (split /\n/, $out) {
    if ($l =~ /^check: ([01]) (.*?)(?: -- (.*))?$/) {
        $checks++;
        ok($1, "node: $2") or diag('  ' . ($3 // ''));
    } elsif ($l =~ /^log: (.*)$/) {
        note $1;
    }
}
is($rc, 0, sprintf('node --test exited 0 (%.1f s)', $secs))
    or diag("exit $rc" . ($rc == -1 ? " (killed after $budget s)" : '')
            . "\nstdout:\n" . tail_of($out) . "\nstderr:\n" . tail_of(slurp("$dir/node.err")));
cmp_ok($checks, '>=', $ENV{COLLAB_JS_TESTS} ? 1 : 20, "node ran its tests ($checks)");

$t->done;
note sprintf('%.1f s in all', time - $T0);
done_testing;
