#!/usr/bin/perl

# The shared limit zone against chosen names (issue 9, item 6;
# docs/limits.md, docs/security.md):
#   two document ids whose CRC32 is equal (the zone's old, unkeyed slot key)
#   are counted apart: a user who may name documents cannot fill a victim
#   document's collab_max_sessions_per_doc with sessions on another id;
#   a user without a role on a full document gets `forbidden`, the answer
#   an empty document gives, not `rate_limited`, and is not counted.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

# CRC-32 (IEEE, as ngx_crc32 computes it) in pure Perl
my @T;
for my $n (0 .. 255) {
    my $c = $n;
    $c = ($c & 1) ? (0xEDB88320 ^ ($c >> 1)) : ($c >> 1) for 1 .. 8;
    $T[$n] = $c;
}
sub crc32 {
    my $c = 0xFFFFFFFF;
    $c = $T[($c ^ $_) & 0xFF] ^ ($c >> 8) for unpack 'C*', $_[0];
    return $c ^ 0xFFFFFFFF;
}
is(sprintf('%08x', crc32('123456789')), 'cbf43926', 'crc32 check value');

# a birthday search over random ids: ~80k tries expected (ids of one length
# that differ in few bytes never collide: CRC is linear).  The zone keyed a
# document by crc32("d" . id)
my @A = ('a' .. 'z', 'A' .. 'Z', '0' .. '9');
my (%seen, $victim, $twin);
while (1) {
    my $n = join '', map { $A[rand @A] } 1 .. 12;
    my $k = crc32("d$n");
    if (exists $seen{$k} && $seen{$k} ne $n) {
        ($victim, $twin) = ($seen{$k}, $n);
        last;
    }
    $seen{$k} = $n;
}
%seen = ();
note("colliding ids: $victim $twin");

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_limit_zone 1m;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_auth variable;
        collab_user $arg_user;
        collab_default_role none;

        location = /collab {
            collab;
            collab_max_sessions_per_doc 2;
        }
    }
EOF
$t->start_nginx;

for my $d ($victim, $twin) {
    $t->redis('SET', "collab:{$d}:acl",
        '{"users":{"alice":"editor","bob":"editor","carol":"editor",'
        . '"dave":"editor","mallory":"editor"}}');
}

my @keep;

sub sub_as {
    my ($user, $doc) = @_;
    my $ws = $t->ws_session(path => "/collab?user=$user");
    my $m = $t->subscribe($ws, $doc);
    push @keep, $ws;
    return ($ws, $m);
}
sub what { my $m = shift; $m ? $m->{type} . ($m->{code} ? ":$m->{code}" : '') : 'nothing' }

# mallory fills the twin: two sessions, the limit
my (undef, $r1) = sub_as('mallory', $twin);
my (undef, $r2) = sub_as('mallory', $twin);
is(what($r1) . ' ' . what($r2), 'subscribed subscribed', 'two sessions on the twin');
my (undef, $r3) = sub_as('mallory', $twin);
is(what($r3), 'error:rate_limited', 'a third session on the twin is over the limit');

# the victim document is not full: its id only shares a CRC32
my ($a1, $ra) = sub_as('alice', $victim);
is(what($ra), 'subscribed', 'the victim document takes a session while its CRC32 twin is full');
my (undef, $rb) = sub_as('bob', $victim);
is(what($rb), 'subscribed', 'and a second one');
my (undef, $rc) = sub_as('carol', $victim);
is(what($rc), 'error:rate_limited', 'its own limit holds');

# a user without a role learns nothing from a full document
my (undef, $rn) = sub_as('nobody', $victim);
is(what($rn), 'error:forbidden', 'no role on a full document: forbidden, as for any document');

# ... and took no place: alice leaves, dave gets hers
$a1->close(1000);
my $rd;
Collab::Test::wait_until(sub {
    my ($ws, $m) = sub_as('dave', $victim);
    $rd = $m;
    what($m) eq 'subscribed';
}, 10);
is(what($rd), 'subscribed', 'a place freed by a leaving session is taken by the next');

$t->done;
done_testing;
