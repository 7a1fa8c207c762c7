#!/usr/bin/perl

# Idempotency keys (issue 9, item 9; docs/protocol.md, docs/redis.md):
#   the key of an op is unambiguous: user "a" with id "b\nc" and user "a\nb"
#   with id "c" are two ops, both stored;
#   clients that share an identity (collab_auth off: everyone is
#   "anonymous") keep their ids apart with a client instance id (the
#   `client` query argument, 16-64 of A-Za-z0-9_-): another client cannot
#   pre-claim a victim's predictable op ids; a retry from the same client
#   instance (a reconnect) is still recognized; a malformed `client` is
#   refused with 400.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->jwt_keys;
$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_default_role editor;

        location = /open {
            collab;
            collab_auth off;
        }
        location = /jwt {
            collab;
            collab_auth jwt;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
    }
EOF
$t->start_nginx;

sub delta { my ($doc, $id) = @_; { type => 'delta', doc => $doc, id => $id, data => { from => $id } } }
sub reply_to {
    my ($ws, $id) = @_;
    return $ws->wait_for(sub { my $m = shift; ($m->{type} eq 'ack' || $m->{type} eq 'nack') && ($m->{id} // '') eq $id }, 5);
}
sub what { my $m = shift; $m ? $m->{type} . ($m->{code} ? ":$m->{code}" : '') : 'nothing' }

###########################################################################
# 1. user/id boundaries: "a" + "b\nc" is not "a\nb" + "c"

{
    my $exp = time + 3600;
    my $ta = $t->jwt(claims => { sub => "a", exp => $exp });
    my $tb = $t->jwt(claims => { sub => "a\nb", exp => $exp });
    my $wa = $t->ws_session(path => "/jwt?access_token=$ta");
    my $wb = $t->ws_session(path => "/jwt?access_token=$tb");

    $wa->send_json(delta('amb', "b\nc"));
    my $ra = reply_to($wa, "b\nc");
    $wb->send_json(delta('amb', "c"));
    my $rb = reply_to($wb, "c");
    is(what($ra) . ' ' . what($rb), 'ack ack', 'both acked');
    isnt($ra->{seq}, $rb->{seq}, 'as two ops: two seqs');
    is($t->log_len('amb'), 2, 'both stored');
}

###########################################################################
# 2. shared identity: a client instance id keeps predictable ids apart

{
    my $victim_client = 'V' . join '', map { ('a' .. 'z', 0 .. 9)[rand 36] } 1 .. 21;

    # the attacker claims the ids the victim will use, as "anonymous" too,
    # with or without a client id of its own
    my $bad = $t->ws_session(path => '/open');
    my $bad2 = $t->ws_session(path => '/open?client=mallory-0123456789');
    for my $i (1 .. 3) {
        $bad->send_json(delta('shared', "op-$i"));
        is(what(reply_to($bad, "op-$i")), 'ack', "attacker claims op-$i");
        $bad2->send_json(delta('shared', "op-$i"));
        is(what(reply_to($bad2, "op-$i")), 'ack', "attacker with a client id claims op-$i");
    }
    is($t->log_len('shared'), 6, 'the attacker\'s ops are stored');

    my $good = $t->ws_session(path => "/open?client=$victim_client");
    my %seq;
    for my $i (1 .. 3) {
        $good->send_json(delta('shared', "op-$i"));
        my $r = reply_to($good, "op-$i");
        is(what($r), 'ack', "victim's op-$i acked");
        $seq{$i} = $r->{seq};
    }
    is($t->log_len('shared'), 9, 'and stored: nobody pre-claimed them');
    my @mine = grep { $_->{data} =~ /"from":"op-/ && $_->{seq} > 6 } $t->log_entries('shared');
    is(scalar @mine, 3, 'the victim\'s entries are in the log');

    # a reconnect with the same client id retries op-2: recognized
    $good->close(1000);
    my $again = $t->ws_session(path => "/open?client=$victim_client");
    $again->send_json(delta('shared', 'op-2'));
    my $r = reply_to($again, 'op-2');
    is(what($r), 'ack', 'a retry after reconnecting is acked');
    is($r->{seq}, $seq{2}, 'with the seq of the first time');
    is($t->log_len('shared'), 9, 'and not stored twice');

    # POST takes the same argument
    my $p = $t->post("/open?client=$victim_client", [delta('shared', 'op-3')]);
    is($p->{status}, 200, 'POST with a client id');
    is(($p->{json}[0]{seq} // ''), $seq{3}, 'POST retry recognized as the same op');
    is($t->log_len('shared'), 9, 'not stored twice');
}

###########################################################################
# 3. malformed client ids

for my $bad ('short', 'has space-0123456789', 'x' x 65, 'semi;colon-0123456789') {
    (my $q = $bad) =~ s/ /%20/g;
    my $ws = $t->ws(path => "/open?client=$q");
    is($ws->status, 400, "client=\"$bad\": 400");
}

$t->done;
done_testing;
