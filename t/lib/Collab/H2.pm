package Collab::H2;

# A minimal HTTP/2 client over TLS (ALPN h2) for what curl cannot do: reset
# one stream of a connection (RST_STREAM) while the others go on, reset many
# at once.  HPACK: requests use literal fields without indexing (no Huffman);
# of the response only :status is decoded.  Flow control: the client opens
# its windows to 2^31-1 at the start and never needs WINDOW_UPDATE again.
#
#   my $h = Collab::H2->new(port => $p);                  # dies unless h2
#   my $id = $h->get('/collab?doc=d', accept => 'text/event-stream',
#                    'last-event-id' => 'E:3');
#   my $id = $h->post('/collab', $json, 'content-type' => 'application/json');
#   $h->wait(sub { $h->status($id) }, 5);                 # reads until true
#   $h->status($id), $h->data($id), $h->ended($id), $h->was_reset($id)
#   $h->events($id)          # SSE events of the stream: [{event, id, data, json}]
#   $h->reset($id, ...)      # RST_STREAM CANCEL for each, in one write
#   $h->goaway, $h->close    # GOAWAY; TCP close

use strict;
use warnings;

use Time::HiRes qw(time);
use JSON::PP;
use Collab::HTTP;

our $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

sub new {
    my ($class, %o) = @_;
    my $s = Collab::HTTP::connect_socket(port => $o{port}, tls => 1, alpn => ['h2'],
        timeout => $o{timeout} || 5) or die "h2 connect to $o{port}: $!";
    my $alpn = $s->alpn_selected // '';
    die "h2: ALPN selected '$alpn', not h2\n" unless $alpn eq 'h2';
    my $self = bless { sock => $s, port => $o{port}, next => 1, streams => {},
                       buf => '', timeout => $o{timeout} || 5 }, $class;
    # preface, SETTINGS (INITIAL_WINDOW_SIZE 2^31-1), connection window
    $self->_write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        . _frame(4, 0, 0, pack('nN', 4, 0x7fffffff))
        . _frame(8, 0, 0, pack('N', 0x7fffffff - 65535)));
    return $self;
}

sub _frame {
    my ($type, $flags, $sid, $payload) = @_;
    my $len = length $payload;
    return pack('CnCCN', $len >> 16, $len & 0xffff, $type, $flags, $sid & 0x7fffffff) . $payload;
}

sub _write {
    my ($self, $data) = @_;
    Collab::HTTP::write_all($self->{sock}, $data, $self->{timeout}) or die "h2: write failed\n";
}

sub _hstr {
    my ($s) = @_;
    my $len = length $s;
    my $out = '';
    if ($len < 127) {
        $out = chr $len;
    } else {
        $out = chr 127;
        $len -= 127;
        while ($len >= 128) { $out .= chr(($len & 127) | 128); $len >>= 7 }
        $out .= chr $len;
    }
    return $out . $s;
}

sub request {
    my ($self, $method, $path, $body, @h) = @_;
    my $id = $self->{next};
    $self->{next} += 2;
    my @fields = (':method' => $method, ':scheme' => 'https',
                  ':authority' => "127.0.0.1:$self->{port}", ':path' => $path, @h);
    my $block = '';
    while (my ($k, $v) = splice @fields, 0, 2) {
        $block .= "\x00" . _hstr(lc $k) . _hstr($v);
    }
    $self->{streams}{$id} = { data => '', ended => 0 };
    my $out = _frame(1, 0x4 | (defined $body ? 0 : 0x1), $id, $block);
    if (defined $body) {
        my $off = 0;
        do {
            my $chunk = substr($body, $off, 16384);
            $off += length $chunk;
            $out .= _frame(0, $off >= length $body ? 1 : 0, $id, $chunk);
        } while ($off < length $body);
    }
    $self->_write($out);
    return $id;
}

sub get  { my ($self, $path, @h) = @_; $self->request('GET', $path, undef, @h) }
sub post { my ($self, $path, $body, @h) = @_; $self->request('POST', $path, $body, @h) }

# RST_STREAM CANCEL (8) for each stream, all in one write
sub reset {
    my ($self, @ids) = @_;
    $self->_write(join '', map { _frame(3, 0, $_, pack('N', 8)) } @ids);
    $self->{streams}{$_}{ended} = 1 for @ids;
}

sub goaway {
    my ($self) = @_;
    $self->_write(_frame(7, 0, 0, pack('NN', 0, 0)));
}

sub close {
    my ($self) = @_;
    CORE::close($self->{sock}) if $self->{sock};
    $self->{eof} = 1;
}

sub _status_of {
    my ($block) = @_;
    my $b = ord $block;
    my %static = (8 => 200, 9 => 204, 10 => 206, 11 => 304, 12 => 400, 13 => 404, 14 => 500);
    return $static{ $b & 0x7f } if $b & 0x80;
    # literal with indexed name :status (index 8..14), raw 3-byte value
    return substr($block, 2, 3) if ($b & 0x3f) >= 8 && ($b & 0x3f) <= 14
        && (ord(substr($block, 1, 1)) & 0x7f) == 3;
    return '?';
}

# read and handle what arrives within $timeout; 0 at EOF
sub pump {
    my ($self, $timeout) = @_;
    return 0 if $self->{eof};
    my $n = Collab::HTTP::read_some($self->{sock}, \$self->{buf}, $timeout // 0);
    if (defined $n && $n == 0) { $self->{eof} = 1 }
    while (length $self->{buf} >= 9) {
        my ($l1, $l2, $type, $flags, $sid) = unpack 'CnCCN', $self->{buf};
        my $len = ($l1 << 16) | $l2;
        last if length $self->{buf} < 9 + $len;
        my $p = substr($self->{buf}, 9, $len);
        substr($self->{buf}, 0, 9 + $len) = '';
        $sid &= 0x7fffffff;
        my $st = $self->{streams}{$sid};
        if ($type == 0 && $st) {                       # DATA
            $p = substr($p, 1, length($p) - 1 - ord $p) if $flags & 0x8;
            $st->{data} .= $p;
            $st->{ended} = 1 if $flags & 1;
        } elsif ($type == 1 && $st) {                  # HEADERS
            my $block = $p;
            if ($flags & 0x8) { my $pad = ord $block; $block = substr($block, 1, length($block) - 1 - $pad) }
            $block = substr($block, 5) if $flags & 0x20;
            $st->{status} //= _status_of($block);
            $st->{ended} = 1 if $flags & 1;
        } elsif ($type == 3 && $st) {                  # RST_STREAM
            $st->{reset} = unpack 'N', $p;
            $st->{ended} = 1;
        } elsif ($type == 4 && !($flags & 1)) {        # SETTINGS: ack
            $self->_write(_frame(4, 1, 0, ''));
        } elsif ($type == 6 && !($flags & 1)) {        # PING: pong
            $self->_write(_frame(6, 1, 0, $p));
        } elsif ($type == 7) {                         # GOAWAY
            $self->{goaway} = [unpack 'NN', $p];
        }
    }
    return !$self->{eof};
}

# pump until $cond->() is true or $timeout passes; returns its value
sub wait {
    my ($self, $cond, $timeout) = @_;
    my $deadline = time + ($timeout // $self->{timeout});
    while (1) {
        my $v = $cond->();
        return $v if $v;
        my $left = $deadline - time;
        return undef if $left <= 0 || $self->{eof};
        $self->pump($left > 0.05 ? 0.05 : $left);
    }
}

sub status    { $_[0]{streams}{ $_[1] }{status} }
sub data      { $_[0]{streams}{ $_[1] }{data} }
sub ended     { $_[0]{streams}{ $_[1] }{ended} }
sub was_reset { $_[0]{streams}{ $_[1] }{reset} }
sub is_eof    { $_[0]{eof} }

sub events {
    my ($self, $id) = @_;
    my $text = $self->data($id) // '';
    $text =~ s/\r\n?/\n/g;
    my @ev;
    while ($text =~ s/^(.*?)\n\n//s) {
        my %e;
        for my $l (split /\n/, $1) {
            next if $l =~ /^:/;
            my ($f, $v) = $l =~ /^([^:]*):?\s?(.*)$/;
            $e{$f} = $f eq 'data' && defined $e{data} ? "$e{data}\n$v" : $v;
        }
        next unless defined $e{data};
        $e{event} //= 'message';
        $e{json} = eval { $JSON->decode($e{data}) };
        push @ev, \%e;
    }
    return @ev;
}

sub has_event {
    my ($self, $id, $name) = @_;
    return scalar grep { $_->{event} eq $name } $self->events($id);
}

1;
