package Collab::WS;

# Blocking-with-timeout WebSocket client for tests (RFC 6455, client side).
#
#   my $ws = Collab::WS->new(port => $p, path => '/collab');     # handshake
#   $ws->status (101/400/...), $ws->headers->{lc name}, $ws->ok, $ws->accept_ok
#   $ws->send_json({type => 'subscribe', doc => 'd'});
#   my $m = $ws->recv_json(2);                     # undef on timeout/close
#   my $ack = $ws->wait_for({type => 'ack', id => 'x'}, 5);
#   $ws->send_frame(opcode => 1, payload => $bytes, fin => 0, rsv => 4,
#                   mask => 0, split => 1);        # byte-by-byte writes
#   my $code = $ws->expect_close(3);               # server close code (1005 = none)
#   $ws->close(1000);                              # returns the echoed code
#
# Handshake options: path, host, protocols => [..], origin, headers => [..]
# (extra lines), method, proto, upgrade, connection, version, key (pass undef
# to omit one of these), extra => bytes sent right behind the handshake in the
# same write, split_handshake => 1, timeout (default 5), auto_pong (default 1),
# auto_close_reply (default 1), pump (default = auto_pong), rcvbuf/sndbuf
# (socket buffers set before connect), tls (default COLLAB_TLS), read_max
# (bytes per read: a slow reader; also $ws->{read_max} = N later).
#
# While the test waits on anything else (another WebSocket, an SSE stream, an
# HTTP request, Redis, Collab::HTTP::idle), an open WebSocket with pump on
# keeps reading: it answers pings and queues what it read, as a browser
# does.  A test that wants a client to stall (stop reading so that the
# server's queue fills) says so: $ws->pump_on(0) or pump => 0.
#
# Messages that wait_for() skips are kept in a queue that recv_json()/
# recv_msg() serve first, so nothing is lost while waiting for an ack.

use strict;
use warnings;

use IO::Select;
use Time::HiRes qw(time sleep);
use Digest::SHA qw(sha1_base64);
use MIME::Base64 qw(encode_base64);
use JSON::PP;
use Collab::HTTP;

our $JSON = JSON::PP->new->utf8->canonical->allow_nonref;
my $GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        port => $o{port},
        timeout => $o{timeout} || 5,
        auto_pong => exists $o{auto_pong} ? $o{auto_pong} : 1,
        auto_close_reply => exists $o{auto_close_reply} ? $o{auto_close_reply} : 1,
        buf => '',
        pending => [],
        pings => [],
        pongs => [],
        frag => undef,
        sent_close => 0,
        got_close => 0,
        eof => 0,
        name => $o{name} || 'ws',
        frames => [],
        read_max => $o{read_max},
    }, $class;
    $self->{pump} = exists $o{pump} ? $o{pump} : $self->{auto_pong};
    $self->handshake(%o);
    Collab::HTTP::register_live($self) if $self->ok;
    return $self;
}

sub _opt {
    my ($o, $k, $def) = @_;
    return exists $o->{$k} ? $o->{$k} : $def;
}

sub handshake {
    my ($self, %o) = @_;
    my $s = Collab::HTTP::connect_socket(port => $o{port}, host => $o{host},
        timeout => $self->{timeout}, rcvbuf => $o{rcvbuf}, sndbuf => $o{sndbuf},
        (exists $o{tls} ? (tls => $o{tls}) : ()))
        or die "ws connect to port $o{port}: $!";
    $self->{sock} = $s;

    my $key = _opt(\%o, 'key', encode_base64(join('', map { chr int rand 256 } 1 .. 16), ''));
    $self->{key} = $key;

    my $method = $o{method} || 'GET';
    my $proto = $o{proto} || 'HTTP/1.1';
    my $path = $o{path} || '/collab';
    my @h = ("Host: " . ($o{host_header} || "127.0.0.1:$o{port}"));
    my $up = _opt(\%o, 'upgrade', 'websocket');
    push @h, "Upgrade: $up" if defined $up;
    my $conn = _opt(\%o, 'connection', 'Upgrade');
    push @h, "Connection: $conn" if defined $conn;
    push @h, "Sec-WebSocket-Key: $key" if defined $key;
    my $ver = _opt(\%o, 'version', 13);
    push @h, "Sec-WebSocket-Version: $ver" if defined $ver;
    my $protos = _opt(\%o, 'protocols', ['collab.v1']);
    push @h, "Sec-WebSocket-Protocol: " . join(', ', @$protos) if $protos && @$protos;
    push @h, "Origin: $o{origin}" if defined $o{origin};
    push @h, @{ $o{headers} || [] };

    my $req = $o{raw_request} // ("$method $path $proto\r\n" . join('', map { "$_\r\n" } @h) . "\r\n");
    $req .= $o{extra} if defined $o{extra};
    $self->{request} = $req;

    if ($o{split_handshake}) {
        for my $i (0 .. length($req) - 1) {
            $self->_write(substr($req, $i, 1)) or last;
            Collab::HTTP::idle(0.001);
        }
    } else {
        $self->_write($req);
    }

    my $deadline = time + $self->{timeout};
    my @head;
    while (!(@head = Collab::HTTP::parse_head($self->{buf}))) {
        my $n = Collab::HTTP::read_some($s, \$self->{buf}, $deadline - time);
        if (!$n) {
            $self->{status} = 0;
            $self->{status_line} = defined $n ? 'EOF before response' : 'timeout before response';
            $self->{headers} = {};
            $self->{eof} = 1 if defined $n;
            return;
        }
    }
    my ($status, $sl, $hd, $list, $hl) = @head;
    $self->{status} = $status;
    $self->{status_line} = $sl;
    $self->{headers} = $hd;
    $self->{header_list} = $list;
    substr($self->{buf}, 0, $hl) = '';

    if ($status != 101) {
        # read a body for diagnostics (content-length or until close)
        my $cl = $hd->{'content-length'};
        while (!defined $cl || length $self->{buf} < $cl) {
            my $n = Collab::HTTP::read_some($s, \$self->{buf}, 1);
            last unless $n;
        }
        $self->{body} = $self->{buf};
        $self->{buf} = '';
    }
}

sub status      { $_[0]{status} }
sub status_line { $_[0]{status_line} }
sub headers     { $_[0]{headers} }
sub header      { $_[0]{headers}{ lc $_[1] } }
sub body        { $_[0]{body} }
sub ok          { ($_[0]{status} || 0) == 101 }
sub socket      { $_[0]{sock} }
sub pings       { $_[0]{pings} }
sub pongs       { $_[0]{pongs} }
sub close_code  { $_[0]{close_code} }
sub close_reason { $_[0]{close_reason} }
sub got_close   { $_[0]{got_close} }
sub is_eof      { $_[0]{eof} }

sub tls         { Collab::HTTP::is_tls($_[0]{sock}) }

# pump_on(0): stop reading while the test waits elsewhere (a stalled client);
# pump_on(1): read again.  Returns the previous setting.
sub pump_on {
    my ($self, $on) = @_;
    my $old = $self->{pump};
    $self->{pump} = $on ? 1 : 0 if defined $on;
    return $old;
}

sub pumpable {
    my ($self) = @_;
    return $self->{pump} && !$self->{eof} && $self->{sock}
        && defined Collab::HTTP::_fileno($self->{sock});
}

# called by Collab::HTTP::wait_io when the socket is readable while the
# test waits on something else: read, answer pings, queue the frames
sub pump {
    my ($self, $on) = @_;
    return $self->pump_on($on) if @_ > 1;
    local $Collab::HTTP::PUMPING = 1;
    for (1 .. 16) {
        my $n = sysread($self->{sock}, my $chunk, 65536);
        if (!defined $n) {
            last if Collab::HTTP::_again();
            $self->{eof} = 1;    # reset
            last;
        }
        if ($n == 0) { $self->{eof} = 1; last }
        $self->{buf} .= $chunk;
        last unless Collab::HTTP::_pending($self->{sock});
    }
    while (my $f = $self->_parse_frame) {
        if ($f->{opcode} == 9) {
            push @{ $self->{pings} }, [$f->{time}, $f->{payload}];
            $self->send_pong($f->{payload}) if $self->{auto_pong} && !$self->{sent_close};
            $f->{handled} = 1;
        }
        push @{ $self->{frames} }, $f;
    }
    Collab::HTTP::unregister_live($self) if $self->{eof};
}

sub accept_ok {
    my ($self) = @_;
    my $want = sha1_base64($self->{key} . $GUID) . '=';
    return ($self->header('sec-websocket-accept') || '') eq $want;
}

sub _write {
    my ($self, $data) = @_;
    return Collab::HTTP::write_all($self->{sock}, $data, $self->{timeout});
}

sub send_raw {
    my ($self, $data, %o) = @_;
    if ($o{split}) {
        my $sz = $o{split} > 1 ? $o{split} : 1;
        for (my $i = 0; $i < length $data; $i += $sz) {
            $self->_write(substr($data, $i, $sz)) or return undef;
            Collab::HTTP::idle($o{delay} // 0.002);
        }
        return 1;
    }
    return $self->_write($data);
}

# build one frame: opcode, payload, fin (1), rsv (0..7), mask (1), mask_key,
# len_bits (force 7/16/64 bit length encoding), len (declared length override)
sub build_frame {
    my (%f) = @_;
    my $payload = defined $f{payload} ? $f{payload} : '';
    utf8::encode($payload) if utf8::is_utf8($payload);
    my $fin = exists $f{fin} ? $f{fin} : 1;
    my $rsv = $f{rsv} || 0;
    my $op = defined $f{opcode} ? $f{opcode} : 1;
    my $mask = exists $f{mask} ? $f{mask} : 1;
    my $len = defined $f{len} ? $f{len} : length $payload;
    my $b0 = ($fin ? 0x80 : 0) | (($rsv & 7) << 4) | ($op & 0x0f);
    my $mbit = $mask ? 0x80 : 0;
    my $hdr = chr $b0;
    my $bits = $f{len_bits} || ($len < 126 ? 7 : $len < 65536 ? 16 : 64);
    if ($bits == 7) {
        $hdr .= chr($mbit | $len);
    } elsif ($bits == 16) {
        $hdr .= chr($mbit | 126) . pack('n', $len);
    } else {
        $hdr .= chr($mbit | 127) . pack('Q>', $len);
    }
    if ($mask) {
        my $key = defined $f{mask_key} ? $f{mask_key} : pack('N', int rand 4294967295);
        $hdr .= $key;
        my $m = $payload ^ substr($key x (int(length($payload) / 4) + 1), 0, length $payload);
        $payload = $m;
    }
    return $hdr . $payload;
}

sub send_frame {
    my ($self, %f) = @_;
    my $data = build_frame(%f);
    $self->{sent_close} = 1 if defined $f{opcode} && $f{opcode} == 8;
    return $self->send_raw($data, split => $f{split}, delay => $f{delay});
}

sub send_text {
    my ($self, $text, %f) = @_;
    return $self->send_frame(%f, opcode => 1, payload => $text);
}

sub send_binary {
    my ($self, $bytes, %f) = @_;
    return $self->send_frame(%f, opcode => 2, payload => $bytes);
}

sub send_json {
    my ($self, $obj, %f) = @_;
    my $text = ref $obj ? $JSON->encode($obj) : $obj;
    return $self->send_text($text, %f);
}

sub send_ping {
    my ($self, $payload, %f) = @_;
    return $self->send_frame(%f, opcode => 9, payload => $payload // '');
}

sub send_pong {
    my ($self, $payload, %f) = @_;
    return $self->send_frame(%f, opcode => 10, payload => $payload // '');
}

# send_close() - empty payload; send_close(1000); send_close(1000, 'bye');
# send_close(undef, undef, raw => "\x03") - raw payload
sub send_close {
    my ($self, $code, $reason, %f) = @_;
    my $payload = '';
    if (defined $f{raw}) {
        $payload = $f{raw};
    } elsif (defined $code) {
        $payload = pack('n', $code) . (defined $reason ? $reason : '');
    }
    delete $f{raw};
    return $self->send_frame(%f, opcode => 8, payload => $payload);
}

# send one message in fragments: send_fragmented(1, 'part1', 'part2', ...)
sub send_fragmented {
    my ($self, $opcode, @parts) = @_;
    for my $i (0 .. $#parts) {
        $self->send_frame(opcode => $i == 0 ? $opcode : 0,
            fin => $i == $#parts ? 1 : 0, payload => $parts[$i]) or return undef;
    }
    return 1;
}

# parse one complete frame out of the buffer, or return undef
sub _parse_frame {
    my ($self) = @_;
    my $b = \$self->{buf};
    return undef if length $$b < 2;
    my ($b0, $b1) = unpack 'CC', $$b;
    my $len = $b1 & 0x7f;
    my $off = 2;
    if ($len == 126) {
        return undef if length $$b < 4;
        $len = unpack 'n', substr($$b, 2, 2);
        $off = 4;
    } elsif ($len == 127) {
        return undef if length $$b < 10;
        $len = unpack 'Q>', substr($$b, 2, 8);
        $off = 10;
    }
    my $masked = $b1 & 0x80;
    my $key;
    if ($masked) {
        return undef if length $$b < $off + 4;
        $key = substr($$b, $off, 4);
        $off += 4;
    }
    return undef if length $$b < $off + $len;
    my $payload = substr($$b, $off, $len);
    substr($$b, 0, $off + $len) = '';
    if ($masked) {
        $payload ^= substr($key x (int($len / 4) + 1), 0, $len);
    }
    return {
        fin => ($b0 & 0x80) ? 1 : 0,
        rsv => ($b0 >> 4) & 7,
        opcode => $b0 & 0x0f,
        masked => $masked ? 1 : 0,
        payload => $payload,
        len => $len,
        time => time,
    };
}

# read one frame; undef on timeout or EOF (then $ws->is_eof is set)
sub read_frame {
    my ($self, $timeout) = @_;
    $timeout = $self->{timeout} unless defined $timeout;
    my $deadline = time + $timeout;
    while (1) {
        return shift @{ $self->{frames} } if @{ $self->{frames} };
        my $f = $self->_parse_frame;
        return $f if $f;
        return undef if $self->{eof};
        my $left = $deadline - time;
        $left = 0 if $left < 0;
        my $n = Collab::HTTP::read_some($self->{sock}, \$self->{buf}, $left,
            $self->{read_max});
        if (!defined $n) {
            return undef if time >= $deadline;
            next;
        }
        if ($n == 0) {
            $self->{eof} = 1;
            return $self->_parse_frame;
        }
    }
}

# handle control frames; return a data message {opcode, data} or a
# close/ping/pong frame when asked to (return_control => 1); undef on timeout
sub recv_msg {
    my ($self, $timeout, %o) = @_;
    if (@{ $self->{pending} } && !$o{no_pending}) {
        return shift @{ $self->{pending} };
    }
    $timeout = $self->{timeout} unless defined $timeout;
    my $deadline = time + $timeout;
    while (1) {
        my $left = $deadline - time;
        $left = 0 if $left < 0;
        my $f = $self->read_frame($left);
        return undef unless $f;
        my $op = $f->{opcode};
        $self->{server_masked}++ if $f->{masked};
        $self->{server_rsv}++ if $f->{rsv};
        if ($op == 9 && $f->{handled}) {
            return { control => 1, %$f } if $o{return_control};
            next;
        }
        if ($op == 9) {
            push @{ $self->{pings} }, [$f->{time}, $f->{payload}];
            $self->send_pong($f->{payload}) if $self->{auto_pong} && !$self->{sent_close};
            return { control => 1, %$f } if $o{return_control};
            next;
        }
        if ($op == 10) {
            push @{ $self->{pongs} }, [$f->{time}, $f->{payload}];
            return { control => 1, %$f } if $o{return_control};
            next;
        }
        if ($op == 8) {
            my $p = $f->{payload};
            $self->{got_close} = 1;
            $self->{close_frame} = $f;
            if (length $p >= 2) {
                $self->{close_code} = unpack 'n', $p;
                $self->{close_reason} = substr($p, 2);
            } else {
                $self->{close_code} = 1005;
                $self->{close_reason} = '';
            }
            if ($self->{auto_close_reply} && !$self->{sent_close}) {
                if ($self->{close_code} == 1005) {
                    $self->send_close;
                } else {
                    $self->send_close($self->{close_code});
                }
            }
            return { control => 1, close => 1, %$f } if $o{return_control};
            return undef;
        }
        if ($op == 0) {
            if (!$self->{frag}) {
                $self->{protocol_errors}++;
                next;
            }
            $self->{frag}{data} .= $f->{payload};
        } else {
            $self->{frag} = { opcode => $op, data => $f->{payload}, rsv => $f->{rsv} };
        }
        if ($f->{fin}) {
            my $m = $self->{frag};
            $self->{frag} = undef;
            return $m;
        }
    }
}

sub _decode {
    my ($m) = @_;
    return $m if $m->{control};
    my $j = eval { $JSON->decode($m->{data}) };
    return $j if ref $j eq 'HASH';
    return { type => '_invalid_json', raw => $m->{data}, decoded => $j };
}

# next server JSON object; undef on timeout/close
sub recv_json {
    my ($self, $timeout) = @_;
    if (@{ $self->{pending} }) {
        return shift @{ $self->{pending} };
    }
    my $m = $self->recv_msg($timeout, no_pending => 1);
    return undef unless $m;
    return _decode($m);
}

sub _match {
    my ($pred, $m) = @_;
    return $pred->($m) if ref $pred eq 'CODE';
    return ($m->{type} // '') eq $pred unless ref $pred;
    for my $k (keys %$pred) {
        my $v = $m->{$k};
        return 0 unless defined $v && "$v" eq "$pred->{$k}";
    }
    return 1;
}

# first message matching $pred (coderef, type string or {field => value});
# messages skipped meanwhile stay queued for recv_json
sub wait_for {
    my ($self, $pred, $timeout) = @_;
    $timeout = $self->{timeout} unless defined $timeout;
    my $p = $self->{pending};
    for my $i (0 .. $#$p) {
        if (_match($pred, $p->[$i])) {
            return splice(@$p, $i, 1);
        }
    }
    my $deadline = time + $timeout;
    while (1) {
        my $left = $deadline - time;
        return undef if $left < 0;
        my $m = $self->recv_msg($left, no_pending => 1);
        return undef unless $m;
        my $j = _decode($m);
        return $j if _match($pred, $j);
        push @$p, $j;
    }
}

# all JSON messages that arrive within $timeout (queued ones first)
sub collect {
    my ($self, $timeout) = @_;
    my @out = @{ $self->{pending} };
    $self->{pending} = [];
    my $deadline = time + $timeout;
    while ((my $left = $deadline - time) > 0) {
        my $m = $self->recv_msg($left, no_pending => 1) or last;
        push @out, _decode($m);
    }
    return @out;
}

sub clear_pending { $_[0]{pending} = [] }

# read and discard everything that arrives within $secs (and the queue)
sub drain {
    my ($self, $secs) = @_;
    my @m = $self->collect($secs // 0.2);
    return scalar @m;
}
sub pending { $_[0]{pending} }

# wait for the server's close frame; returns its code (1005 when empty),
# undef on timeout or EOF without a close frame.  Data messages are queued.
sub expect_close {
    my ($self, $timeout) = @_;
    return $self->{close_code} if $self->{got_close};
    $timeout = $self->{timeout} unless defined $timeout;
    my $deadline = time + $timeout;
    while (1) {
        my $left = $deadline - time;
        return undef if $left < 0;
        my $m = $self->recv_msg($left, no_pending => 1, return_control => 1);
        return undef unless $m;
        if ($m->{control}) {
            return $self->{close_code} if $m->{close};
            next;
        }
        push @{ $self->{pending} }, _decode($m);
    }
}

# after a close handshake: wait for the TCP EOF; 1 if it came in time
sub wait_eof {
    my ($self, $timeout) = @_;
    $timeout = $self->{timeout} unless defined $timeout;
    my $deadline = time + $timeout;
    while (!$self->{eof}) {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        my $n = Collab::HTTP::read_some($self->{sock}, \$self->{buf}, $left);
        $self->{eof} = 1 if defined $n && $n == 0;
    }
    return 1;
}

# client-initiated close; returns the code of the server's close frame
sub close {
    my ($self, $code, $reason, $timeout) = @_;
    $self->send_close($code // 1000, $reason) unless $self->{sent_close};
    my $c = $self->expect_close($timeout // 3);
    $self->wait_eof(2);
    Collab::HTTP::unregister_live($self);
    CORE::close($self->{sock});
    return $c;
}

# vanish without a close frame (over TLS: no close_notify either)
sub drop {
    my ($self) = @_;
    Collab::HTTP::unregister_live($self);
    CORE::close($self->{sock}) if $self->{sock};
    $self->{eof} = 1;
}

# true while no close frame arrived and the socket is not at EOF
sub is_open {
    my ($self) = @_;
    return 0 if $self->{got_close} || $self->{eof};
    my $sel = IO::Select->new($self->{sock});
    if (Collab::HTTP::_pending($self->{sock}) || $sel->can_read(0)) {
        my $n = sysread($self->{sock}, my $chunk, 65536);
        if (!defined $n && Collab::HTTP::_again()) { return 1 }
        if (!$n) { $self->{eof} = 1; return 0 }
        $self->{buf} .= $chunk;
    }
    return 1;
}

# block until any of @$list has data buffered or readable (or timeout)
sub wait_any {
    my ($list, $timeout) = @_;
    my $deadline = time + ($timeout // 0);
    while (1) {
        for my $ws (@$list) {
            return 1 if @{ $ws->{pending} } || @{ $ws->{frames} }
                || Collab::HTTP::_pending($ws->{sock});
        }
        my $sel = IO::Select->new(map { $_->{sock} } grep { !$_->{eof} } @$list);
        return 0 unless $sel->count;
        my @r = $sel->can_read(0);
        return scalar @r if @r;
        # serves every live client, these ones included (their frames queue)
        my $left = $deadline - time;
        Collab::HTTP::idle($left > 0.01 ? 0.01 : $left);
        return 0 if time >= $deadline;
    }
}

1;
