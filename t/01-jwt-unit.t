#!/usr/bin/perl

# Unit tests of the JWT verifier: builds t/unit/jwt_test.c with
# ngx_http_collab_jwt.c (libcrypto and jansson, no nginx needed) and
# re-emits the TAP of the test program, one Test::More result per line.
# The test program makes its keys and tokens itself with the OpenSSL API.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Temp qw(tempdir);
use FindBin;
use Test::More;

my $root = abs_path("$FindBin::Bin/..");
my $dir = tempdir('jwt-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $bin = "$dir/jwt_test";

my @cc = split ' ', ($ENV{CC} || 'cc');

my @cmd = (@cc, qw(-O1 -g -Wall -Werror),
    '-I', "$root/ngx_collab_module",
    "$root/ngx_collab_module/ngx_http_collab_jwt.c",
    "$root/t/unit/jwt_test.c",
    '-lcrypto', '-ljansson',
    '-o', $bin);

if (system(@cmd) != 0) {
    fail("compile: @cmd");
    done_testing();
    exit;
}

pass('compile jwt_test');

open(my $fh, '-|', $bin) or BAIL_OUT("cannot run $bin: $!");

my ($planned, $seen) = (undef, 0);

while (my $line = <$fh>) {
    chomp $line;

    if ($line =~ /^(not )?ok (\d+)(?:\s*-\s*(.*))?$/) {
        my ($failed, $n, $name) = ($1, $2, $3);

        $seen++;
        ok(!$failed, defined $name ? $name : "unit test $n");

        diag("unit test numbered $n, expected $seen") if $n != $seen;

    } elsif ($line =~ /^1\.\.(\d+)/) {
        $planned = $1;

    } elsif ($line =~ /^#\s?(.*)$/) {
        note($1);

    } elsif ($line =~ /\S/) {
        diag("unexpected output: $line");
    }
}

close $fh;
my $status = $?;

is($status >> 8, 0, 'jwt_test exit status');
is($status & 127, 0, 'jwt_test not killed by a signal');
ok(defined $planned && $planned == $seen,
    'jwt_test ran every planned test ('
    . (defined $planned ? $planned : 'no plan') . ", saw $seen)");

done_testing();
