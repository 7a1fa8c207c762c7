#!/usr/bin/perl

# Yjs in a real browser: Debian's chromium (playwright-core of t/browser)
# opens t/yjs/browser/editor.html, a CodeMirror 6 editor bound to a Y.Text
# by y-codemirror.next and synced by the stock y-websocket provider through
# nginx (collab_protocol y-websocket), modules straight from t/yjs/node_modules
# with an import map.  Two pages type at once and converge, the other's
# cursor shows (awareness), a late page gets the whole document; the log
# holds the updates as base64 deltas.  Bounded to 60 s.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX qw(WNOHANG);
use JSON::PP;
use Collab::Test;

my $CHROMIUM = $ENV{COLLAB_CHROMIUM} || '/usr/bin/chromium';
my $YJS = "$FindBin::Bin/yjs";

plan skip_all => "chromium is not installed ($CHROMIUM)" unless -x $CHROMIUM;
plan skip_all => 'no t/browser/node_modules (make t/browser/node_modules)'
    unless -f "$FindBin::Bin/browser/node_modules/playwright-core/package.json";
plan skip_all => 'no t/yjs/node_modules (make t/yjs/node_modules)'
    unless -d "$YJS/node_modules/y-codemirror.next";

my $t = Collab::Test->new(timeout => 60);
my $dir = $t->dir;
$t->start_redis;
$t->write_nginx_conf(<<"NGINX", workers => 2);
    types {
        text/html               html;
        application/javascript  js mjs;
    }
    default_type application/octet-stream;

    collab_redis 127.0.0.1:%%REDIS_PORT%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /yjs/ {
            collab;
            collab_protocol y-websocket;
            collab_user \$arg_user;
            collab_auth variable;
            collab_default_role editor;
        }

        location = /favicon.ico { return 204; }

        location /yjs-page/ {
            alias $YJS/browser/;
        }

        # bare imports of the import map: lib0/encoding -> lib0/encoding.js
        location /nm/ {
            alias $YJS/node_modules/;
            try_files \$uri \$uri.js =404;
        }
    }
NGINX
$t->start_nginx;

my $room = "cm-$$";
my ($out, $err) = ("$dir/browser.out", "$dir/browser.err");
mkdir "$dir/$_" for qw(tmp home);
my $pid = fork // die "fork: $!";
if (!$pid) {
    POSIX::setpgid(0, 0);
    @ENV{qw(TMPDIR HOME XDG_CONFIG_HOME XDG_CACHE_HOME)} =
        ("$dir/tmp", "$dir/home", "$dir/home/.config", "$dir/home/.cache");
    open STDIN, '<', '/dev/null';
    open STDOUT, '>', $out;
    open STDERR, '>', $err;
    exec('node', "$YJS/browser/run.mjs", 'http://127.0.0.1:' . $t->port, $room, $CHROMIUM)
        or POSIX::_exit(127);
}
local $Collab::Test::KILL_AT_END{$pid} = 1;
my $rc;
my $deadline = time + 45;
while (time < $deadline) {
    if (waitpid($pid, WNOHANG) == $pid) { $rc = $? >> 8; last }
    $t->idle(0.1);
}
if (!defined $rc) {
    kill 'KILL', -$pid;
    waitpid $pid, 0;
}

sub slurp { open my $fh, '<', $_[0] or return ''; local $/; scalar <$fh> }
my $text;
my $checks = 0;
for my $l (split /\n/, slurp($out)) {
    if ($l =~ /^check: ([01]) (.*?)(?: -- (.*))?$/) {
        $checks++;
        ok($1, "browser: $2") or diag($3 // '');
    } elsif ($l =~ /^result: (.+)$/) {
        $text = eval { JSON::PP::decode_json($1)->{text} };
    } elsif ($l =~ /^log: (.*)$/) {
        note $1;
    }
}
is($rc, 0, 'run.mjs exited 0') or diag(slurp($out) . slurp($err));
cmp_ok($checks, '>=', 5, "run.mjs ran its checks ($checks)");

like($text // '', qr/alice was here\./, 'the text has what both typed');

my @log = $t->log_entries($room);
ok(@log > 10, 'the keystrokes are updates in the log (' . scalar(@log) . ')');
ok(!grep({ $_->{data} !~ /^"[A-Za-z0-9+\/=]+"$/ } @log), 'each a base64 string');

$t->done;
done_testing;
