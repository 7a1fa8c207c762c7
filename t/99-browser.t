#!/usr/bin/perl

# The demo page in a real browser: Debian's chromium driven by playwright-core
# (t/browser/demo.mjs) against redis + nginx serving www/ and /collab like
# conf/nginx.conf.in. Two browser contexts (alice, bob) on one document: concurrent
# edits show up in both pages in the same seq order; after a connection loss (nginx
# reload while bob is offline) bob resumes with since + epoch; a reloaded tab replays
# the log; one screenshot per page in the test's temp dir. Then the sticky-notes board
# (www/index.html, t/browser/board.mjs): an editor and a viewer with the demo tokens,
# a note added by one appears for the other, presence and cursors, the viewer cannot edit
# (UI and server), the offline indicator and outbox, a browser whose WebSocket upgrades nginx
# refuses (SSE + POST), a reload with an unacked note (Redis frozen). Bounded to 100 s.
#
# Needs /usr/bin/chromium (COLLAB_CHROMIUM), node >= 18 and npm (`make deps` installs
# them; `make test` runs `npm ci` in t/browser). Skipped only when those are missing.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX qw(WNOHANG);
use JSON::PP;
use Collab::Test;

my $LIMIT = 100;                    # seconds for the whole file
my $T0 = time;
my $BROWSER_DIR = "$FindBin::Bin/browser";
my $CHROMIUM = $ENV{COLLAB_CHROMIUM} || '/usr/bin/chromium';

sub which {
    my ($prog) = @_;
    for my $d (split /:/, $ENV{PATH} // '') {
        return "$d/$prog" if length $d && -f "$d/$prog" && -x _;
    }
    return undef;
}

my $node = which('node') // which('nodejs');
plan skip_all => "chromium is not installed ($CHROMIUM missing; `make deps` installs Debian's chromium)"
    unless -f $CHROMIUM && -x _;
plan skip_all => 'node is not installed (`make deps` installs nodejs)' unless $node;
my $node_version = `$node --version 2>/dev/null` // '';
plan skip_all => "node >= 18 is needed by playwright-core, found '" . ($node_version =~ s/\s+$//r) . "'"
    unless $node_version =~ /^v(\d+)\./ && $1 >= 18;
my $have_modules = -f "$BROWSER_DIR/node_modules/playwright-core/package.json";
plan skip_all => 'npm is not installed and t/browser/node_modules is missing'
    unless $have_modules || which('npm');

my $t = Collab::Test->new(timeout => $LIMIT);
my $dir = $t->dir;
my $JSON = JSON::PP->new->utf8->canonical;

sub left { $LIMIT - (time - $T0) }

# run a command with a deadline, in its own process group (so that chromium and its
# helpers go with it); stdout and stderr to files; returns the exit code (-1: killed)
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

sub tail_of { my @l = split /\n/, $_[0]; join "\n", @l[($#l > 25 ? $#l - 25 : 0) .. $#l] }

# --- playwright-core (normally already there: `make test` runs npm ci in t/browser)
if (!$have_modules) {
    my $rc = run_bounded(cmd => ['npm', 'ci', '--no-audit', '--no-fund', '--loglevel=error'],
        cwd => $BROWSER_DIR, out => "$dir/npm.out", err => "$dir/npm.err",
        timeout => 25);
    ok($rc == 0 && -f "$BROWSER_DIR/node_modules/playwright-core/package.json",
        'npm ci in t/browser installed playwright-core')
        or diag tail_of(slurp("$dir/npm.out") . slurp("$dir/npm.err"));
}

# --- redis + nginx like conf/nginx.conf.in: www/ and /collab, the user from ?user=
$t->start_redis;
$t->write_nginx_conf(<<"EOF", workers => 2);
    types {
        text/html               html;
        application/javascript  js;
        text/css                css;
    }
    default_type application/octet-stream;

    collab_redis 127.0.0.1:%%REDIS_PORT%%;

    # board.mjs: bob's browser has the cookie nows=1: its WebSocket upgrades are refused
    map "\$cookie_nows:\$http_upgrade" \$board_nows {
        "~^1:."  1;
        default  "";
    }

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /collab {
            collab;
            collab_doc  \$arg_doc;
            collab_user \$arg_user;
        }

        location = /board/collab {
            if (\$board_nows) {
                return 403;
            }
            collab;
            collab_doc          \$arg_doc;
            collab_auth         jwt;
            collab_jwt_key      hs256 file=$Collab::Test::REPO/conf/demo-jwt.key;
            collab_default_role none;
            collab_merge        json-merge;
            collab_state_max    256k;
        }

        location / {
            root $Collab::Test::REPO/www;
            index index.html;
        }
    }
EOF
$t->start_nginx;

my $page = $t->http(path => '/inspector.html');
like($page->{body} // '', qr{<script src="collab\.js"></script>}, 'nginx serves the inspector page');

# --- the browser run
my $doc = "browser-$$";
my $shots = "$dir/screenshots";
mkdir "$dir/$_" for qw(tmp home);
my $budget = int(left() - 45);          # leave time for the board, the checks and nginx's quit
my $t_run = time;
my $rc = run_bounded(
    cmd => [$node, "$BROWSER_DIR/demo.mjs",
            '--url', 'http://127.0.0.1:' . $t->port . '/inspector.html', '--doc', $doc, '--out', $shots,
            '--nginx-pid', $t->master_pid, '--chromium', $CHROMIUM,
            '--timeout-ms', ($budget - 3) * 1000],
    # chromium's fresh --user-data-dir (made by playwright in TMPDIR) and anything it
    # writes to HOME stay in the test's temp dir
    env => { TMPDIR => "$dir/tmp", HOME => "$dir/home",
             XDG_CONFIG_HOME => "$dir/home/.config", XDG_CACHE_HOME => "$dir/home/.cache" },
    out => "$dir/browser.out", err => "$dir/browser.err", timeout => $budget);
my $secs = time - $t_run;
my $out = slurp("$dir/browser.out");
my $err = slurp("$dir/browser.err");

my ($checks, $result, @pngs) = (0);
for my $l (split /\n/, $out) {
    if ($l =~ /^check: ([01]) (.*?)(?: -- (.*))?$/) {
        my ($pass, $name, $detail) = ($1, $2, $3);
        $checks++;
        ok($pass, "browser: $name") or diag('  ' . ($detail // ''));
    } elsif ($l =~ /^screenshot: (.+)$/) {
        push @pngs, $1;
    } elsif ($l =~ /^result: (.+)$/) {
        $result = eval { $JSON->decode($1) };
    } elsif ($l =~ /^log: (.*)$/) {
        note $1;
    }
}
is($rc, 0, sprintf('demo.mjs exited 0 (%.1f s)', $secs))
    or diag("exit $rc" . ($rc == -1 ? " (killed after $budget s)" : '')
            . "\nstdout:\n" . tail_of($out) . "\nstderr:\n" . tail_of($err));
cmp_ok($checks, '>=', 40, "demo.mjs ran its checks ($checks)");

# --- screenshots
is(scalar @pngs, 2, 'a screenshot of each page');
for my $png (@pngs) {
    my $head = substr(slurp($png), 0, 8);
    ok(-s $png > 10_000 && $head eq "\x89PNG\r\n\x1a\n", "$png is a PNG");
}
diag('screenshot: ' . $_ . ($ENV{COLLAB_KEEP} ? '' : ' (the temp dir is removed on success unless COLLAB_KEEP=1)'))
    for @pngs;

# --- what the pages showed is what Redis stored
SKIP: {
    skip 'no result from demo.mjs', 3 unless $result;
    my @log = $t->log_entries($doc);
    is(scalar @log, $result->{count}, "Redis holds the $result->{count} deltas the pages show");
    is_deeply(
        [map { [0 + $_->{seq}, $_->{user}, $JSON->decode($_->{data})] } @log],
        [map { [$_->{seq}, $_->{user}, $JSON->decode($_->{data})] } @{ $result->{rows} }],
        'same seq, user and data as the log table in the pages');
    is($t->redis('HGET', "collab:{$doc}:state", 'epoch'), $result->{epoch}, 'the epoch the pages show');
}

# --- the sticky-notes board
my $board_page = $t->http(path => '/');
like($board_page->{body} // '', qr{<script src="collab\.js"></script>.*<script src="board\.js">}s,
     'nginx serves the board page');
my $bbudget = int(left() - 8);
my $t_board = time;
my $brc = run_bounded(
    cmd => [$node, "$BROWSER_DIR/board.mjs",
            '--url', 'http://127.0.0.1:' . $t->port . '/', '--board', "t$$", '--out', $shots,
            '--chromium', $CHROMIUM, '--timeout-ms', ($bbudget - 3) * 1000,
            '--redis-pid', $t->redis_pid],
    env => { TMPDIR => "$dir/tmp", HOME => "$dir/home",
             XDG_CONFIG_HOME => "$dir/home/.config", XDG_CACHE_HOME => "$dir/home/.cache" },
    out => "$dir/board.out", err => "$dir/board.err", timeout => $bbudget);
my $bout = slurp("$dir/board.out");
my ($bchecks, @bpngs) = (0);
for my $l (split /\n/, $bout) {
    if ($l =~ /^check: ([01]) (.*?)(?: -- (.*))?$/) {
        $bchecks++;
        ok($1, "browser: $2") or diag('  ' . ($3 // ''));
    } elsif ($l =~ /^screenshot: (.+)$/) {
        push @bpngs, $1;
    } elsif ($l =~ /^log: (.*)$/) {
        note $1;
    }
}
is($brc, 0, sprintf('board.mjs exited 0 (%.1f s)', time - $t_board))
    or diag("exit $brc\nstdout:\n" . tail_of($bout) . "\nstderr:\n" . tail_of(slurp("$dir/board.err")));
cmp_ok($bchecks, '>=', 18, "board.mjs ran its checks ($bchecks)");
is(scalar @bpngs, 2, 'a screenshot of each board page');
diag('screenshot: ' . $_) for @bpngs;
# COLLAB_SCREENSHOT_DIR=docs: refresh docs/board.png (the README's screenshot)
if ($ENV{COLLAB_SCREENSHOT_DIR} && !$brc) {
    my ($png) = grep { m{/board-alice\.png$} } @bpngs;
    system('cp', $png, "$ENV{COLLAB_SCREENSHOT_DIR}/board.png") if $png;
}

$t->done;
note sprintf('%.1f s in all', time - $T0);
done_testing;
