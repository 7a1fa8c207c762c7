#!/usr/bin/perl

# The collab_redis examples of docs/redis.md (one per topology) are what
# operators copy: each must pass `nginx -t` as it is written there.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 60);

open my $fh, '<', "$FindBin::Bin/../docs/redis.md" or die "redis.md: $!";
my $doc = do { local $/; <$fh> };
close $fh;

my @blocks = grep { /^\s*collab_redis\s/ && !/\bserver\s*\{/ }
             $doc =~ /^```nginx\n(.*?)^```/msg;

ok(@blocks >= 3, scalar(@blocks) . ' collab_redis examples in docs/redis.md');
ok((grep { /collab_redis\s+sentinel:/ } @blocks)
   && (grep { /collab_redis\s+cluster:/ } @blocks),
   'Sentinel and Cluster are among them');

for my $b (@blocks) {
    my ($first) = $b =~ /^\s*(collab_redis[^\n]*)/;
    my ($rc, $out) = $t->check_nginx_conf(<<"EOF2");
    $b
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab { collab; }
    }
EOF2
    is($rc, 0, "nginx -t accepts: $first") or diag $out;
    unlike($out, qr/\[(warn|emerg|alert)\]/, '... without a warning') or diag $out;
}

$t->done;
done_testing;
