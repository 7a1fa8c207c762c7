#!/usr/bin/perl

# An error message that echoes client text is cut at 256 bytes: the cut
# falls on a character boundary, so the text frame stays valid UTF-8 (a
# browser closes the connection with 1007 otherwise).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Encode ();
use Collab::Test;

my $t = Collab::Test->new(timeout => 60);
$t->start_redis;
$t->write_nginx_conf(<<'EOF2', workers => 1);
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /collab {
            collab;
            collab_ping 30s;
        }
    }
EOF2
$t->start_nginx;

my $ws = $t->ws_session;

# a message type of multibyte characters after 0..3 ASCII bytes: one of the
# four shifts puts the 256-byte cut inside a character for each width
for my $char ("\x{e9}", "\x{20ac}", "\x{1f600}") {
    for my $shift (0 .. 3) {
        my $type = ('a' x $shift) . ($char x 150);
        my $bytes = $type;
        utf8::encode($bytes);
        my $frame = '{"type":"' . $bytes . '"}';
        $ws->send_text($frame);
        my $m = $ws->recv_msg(3);
        my $raw = $m && $m->{data};
        my $name = sprintf('U+%04X after %d ASCII bytes', ord $char, $shift);
        ok(defined $raw && eval { Encode::decode('UTF-8', my $x = $raw, Encode::FB_CROAK); 1 },
            "$name: the error is valid UTF-8") or diag explain $raw;
        my $j = eval { Collab::Test::json_decode($raw) };
        is($j && $j->{code}, 'invalid', "$name: error invalid");
        my $msg = $j && $j->{message} // '';
        like($msg, qr/^unknown message type "a{$shift}\Q$char\E+$/, "$name: cut between characters") or diag(Collab::Test::json_encode([$raw]));
    }
}
ok($ws->is_open, 'the connection stays open');

$t->done;
done_testing();
