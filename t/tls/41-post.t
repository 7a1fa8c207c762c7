#!/usr/bin/perl

# t/41-post.t over TLS: every listen gets `ssl` with a self-signed certificate
# and every client speaks TLS (COLLAB_TLS=1, see t/README.md).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";

BEGIN { $ENV{COLLAB_TLS} = 1 }
my $file = "$FindBin::Bin/../41-post.t";
my $ok = do $file;
die "$file: $@" if $@;
