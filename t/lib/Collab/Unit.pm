package Collab::Unit;

# Runs a standalone C unit test: compiles it with cc (no nginx needed) and
# re-emits its TAP, one Test::More result per line.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use Test::More;

# run(name => 'jwt_test', sources => [...repo-relative...], libs => [...],
#     comments => 'diag' | 'note')
sub run {
    my (%o) = @_;
    my $name = $o{name};
    my $root = abs_path(dirname(__FILE__) . '/../../..');
    my $dir = tempdir("$name-XXXXXX", TMPDIR => 1, CLEANUP => 1);
    my $bin = "$dir/$name";

    my @cc = split ' ', ($ENV{CC} || 'cc');
    my @cmd = (@cc, qw(-O1 -g -Wall -Werror),
        '-I', "$root/ngx_collab_module",
        (map { "$root/$_" } @{ $o{sources} }),
        @{ $o{libs} || [] },
        '-o', $bin);

    if (system(@cmd) != 0) {
        fail("compile: @cmd");
        done_testing();
        return;
    }

    pass("compile $name");

    open(my $fh, '-|', $bin) or BAIL_OUT("cannot run $bin: $!");

    my ($planned, $seen) = (undef, 0);
    my $comment = ($o{comments} || 'diag') eq 'note' ? \&note : \&diag;

    while (my $line = <$fh>) {
        chomp $line;

        if ($line =~ /^(not )?ok (\d+)(?:\s*-\s*(.*))?$/) {
            my ($failed, $n, $title) = ($1, $2, $3);

            $seen++;
            ok(!$failed, defined $title ? $title : "unit test $n");

            diag("unit test numbered $n, expected $seen") if $n != $seen;

        } elsif ($line =~ /^1\.\.(\d+)/) {
            $planned = $1;

        } elsif ($line =~ /^#\s?(.*)$/) {
            $comment->($1);

        } elsif ($line =~ /\S/) {
            diag("unexpected output: $line");
        }
    }

    close $fh;
    my $status = $?;

    is($status >> 8, 0, "$name exit status");
    is($status & 127, 0, "$name not killed by a signal");
    ok(defined $planned && $planned == $seen,
        "$name ran every planned test ("
        . (defined $planned ? $planned : 'no plan') . ", saw $seen)");

    done_testing();
}

1;
