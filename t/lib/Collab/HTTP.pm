package Collab::HTTP;

# Raw HTTP/1.1 over a loopback socket (plain or TLS): no keep-alive games.
#
#   my $r = Collab::HTTP::request(port => $p, method => 'POST', path => '/collab',
#       headers => ['Content-Type: application/json'], body => $json, timeout => 5);
#   $r->{status}, $r->{status_line}, $r->{headers}{lc name}, $r->{body}, $r->{raw}
#
#   Collab::HTTP::post_json($port, $path, $body_text_or_ref, %opts)
#       => same, plus $r->{json} when the body decodes.
#
# Every wait of the harness (read_some, write_all, idle) goes through wait_io,
# which also serves the "live" clients (register_live: the WebSockets): while
# a test waits on one socket, every other open WebSocket keeps reading and
# answers the server's pings, as a browser does.  TLS: connect_socket(tls =>
# 1), or COLLAB_TLS=1 in the environment, speaks TLS (IO::Socket::SSL,
# certificate not verified, socket non-blocking).

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use Socket qw(IPPROTO_TCP TCP_NODELAY SOL_SOCKET SO_RCVBUF SO_SNDBUF
              sockaddr_in inet_aton);
use Scalar::Util qw(weaken refaddr);
use Time::HiRes qw(time);
use JSON::PP;

our $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

# clients served while the test waits elsewhere: refaddr => weak ref to an
# object with {sock}, ->pumpable and ->pump (read what is there, answer pings)
our %LIVE;
our $PUMPING = 0;

sub register_live {
    my ($obj) = @_;
    my $k = refaddr $obj;
    $LIVE{$k} = $obj;
    weaken $LIVE{$k};
}

sub unregister_live { delete $LIVE{ refaddr $_[0] } }

sub tls_default { $ENV{COLLAB_TLS} ? 1 : 0 }

sub is_tls { ref $_[0] && $_[0]->isa('IO::Socket::SSL') }

# decrypted bytes that OpenSSL holds: select() does not see them
sub _pending { is_tls($_[0]) && $_[0]->pending }

sub _fileno { my $f = eval { fileno $_[0] }; return $f }

# wait until $s is readable (or writable with $write), serving the live
# clients meanwhile; $s undef: just serve them for $timeout.  1 if ready.
sub wait_io {
    my ($s, $write, $timeout) = @_;
    my $deadline = time + (defined $timeout && $timeout > 0 ? $timeout : 0);
    my $fd = defined $s ? _fileno($s) : undef;
    while (1) {
        return 1 if !$write && defined $s && _pending($s);
        my %others;
        if (!$PUMPING) {
            for my $o (values %LIVE) {
                next unless $o && $o->pumpable;
                my $ofd = _fileno($o->{sock});
                next if !defined $ofd || (defined $fd && $ofd == $fd);
                $others{$ofd} = $o;
            }
            # TLS records already decrypted: serve them before sleeping
            for my $o (values %others) {
                $o->pump if _pending($o->{sock});
            }
        }
        my $rsel = IO::Select->new(map { $_->{sock} } values %others);
        $rsel->add($s) if defined $s && !$write;
        my $wsel = IO::Select->new(defined $s && $write ? ($s) : ());
        my $left = $deadline - time;
        $left = 0 if $left < 0;
        my ($r, $w);
        if ($rsel->count || $wsel->count) {
            ($r, $w) = IO::Select->select($rsel, $wsel, undef, $left);
        } else {
            select(undef, undef, undef, $left);
        }
        my $ready = ($w && @$w) ? 1 : 0;
        for my $h (@{ $r || [] }) {
            my $hfd = _fileno($h);
            next unless defined $hfd;
            if (defined $fd && $hfd == $fd) { $ready = 1; next }
            $others{$hfd}->pump if $others{$hfd};
        }
        return 1 if $ready;
        return 0 if time >= $deadline;
    }
}

# a pause that keeps the live clients answering (instead of sleep)
sub idle { wait_io(undef, 0, $_[0]) }

# connect to 127.0.0.1:port; options: host, tls (default COLLAB_TLS),
# rcvbuf / sndbuf (set before connect), alpn => [...], timeout
sub connect_socket {
    my (%o) = @_;
    my $s = IO::Socket::INET->new(Proto => 'tcp') or return undef;
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, $o{rcvbuf}) or return undef if $o{rcvbuf};
    setsockopt($s, SOL_SOCKET, SO_SNDBUF, $o{sndbuf}) or return undef if $o{sndbuf};
    my $ip = inet_aton($o{host} || '127.0.0.1') or return undef;
    connect($s, sockaddr_in($o{port}, $ip)) or return undef;
    $s->autoflush(1);
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    binmode $s;
    if (exists $o{tls} ? $o{tls} : tls_default()) {
        require IO::Socket::SSL;
        IO::Socket::SSL->start_SSL($s,
            SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE(),
            SSL_hostname => '',
            Timeout => $o{timeout} || 5,
            ($o{alpn} ? (SSL_alpn_protocols => $o{alpn}) : ()),
        ) or do {
            $! = 71;    # EPROTO
            no warnings 'once';
            warn "TLS handshake: $IO::Socket::SSL::SSL_ERROR\n";
            return undef;
        };
        $s->blocking(0);
    }
    return $s;
}

sub _again { $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR} }

# write everything, with a deadline; returns 1 or undef (peer gone)
sub write_all {
    my ($s, $data, $timeout) = @_;
    $timeout ||= 5;
    my $deadline = time + $timeout;
    my $off = 0;
    local $SIG{PIPE} = 'IGNORE';
    while ($off < length $data) {
        my $left = $deadline - time;
        return undef if $left <= 0;
        next unless wait_io($s, 1, $left);
        my $n = syswrite($s, $data, length($data) - $off, $off);
        if (!defined $n) {
            next if _again();
            return undef;
        }
        return undef unless $n > 0;
        $off += $n;
    }
    return 1;
}

# read at most one chunk (of at most $max bytes, default 64k) into $$bufref;
# returns bytes read, 0 on EOF, undef on timeout / error
sub read_some {
    my ($s, $bufref, $timeout, $max) = @_;
    my $deadline = time + ($timeout < 0 ? 0 : $timeout);
    while (1) {
        return undef unless wait_io($s, 0, $deadline - time);
        my $n = sysread($s, my $chunk, $max || 65536);
        if (!defined $n) {
            return undef unless _again() && time < $deadline;
            next;
        }
        $$bufref .= $chunk if $n;
        return $n;
    }
}

# Parse "HTTP/1.1 200 OK\r\nName: value\r\n...\r\n\r\n" at the start of $buf.
# Returns (status, status_line, \%headers, \@header_list, header_length) or ()
sub parse_head {
    my ($buf) = @_;
    my $end = index($buf, "\r\n\r\n");
    return () if $end < 0;
    my $head = substr($buf, 0, $end);
    my @lines = split /\r\n/, $head;
    my $sl = shift @lines;
    my ($status) = $sl =~ m{^HTTP/\d\.\d\s+(\d{3})};
    my (%h, @list);
    for my $l (@lines) {
        my ($k, $v) = $l =~ /^([^:]+):\s*(.*?)\s*$/ or next;
        push @list, [$k, $v];
        my $lk = lc $k;
        $h{$lk} = exists $h{$lk} ? "$h{$lk}, $v" : $v;
    }
    return ($status, $sl, \%h, \@list, $end + 4);
}

# Decode as much chunked data as is complete in $$raw.
# Returns (decoded_bytes, finished_flag); consumes from $$raw.
sub dechunk {
    my ($raw) = @_;
    my $out = '';
    while (1) {
        my $e = index($$raw, "\r\n");
        return ($out, 0) if $e < 0;
        my $line = substr($$raw, 0, $e);
        $line =~ s/;.*//;
        my $len = hex $line;
        if ($len == 0) {
            # last chunk; (optional) trailers up to an empty line
            my $after = substr($$raw, $e + 2);
            return ($out, 0) unless $after =~ /^\r\n/ || $after =~ /\r\n\r\n/;
            $$raw = '';
            return ($out, 1);
        }
        return ($out, 0) if length($$raw) < $e + 2 + $len + 2;
        $out .= substr($$raw, $e + 2, $len);
        substr($$raw, 0, $e + 2 + $len + 2) = '';
    }
}

sub request {
    my (%o) = @_;
    my $timeout = $o{timeout} || 10;
    my $method = $o{method} || 'GET';
    my $path = $o{path} || '/';
    my $body = $o{body};
    my $proto = $o{proto} || 'HTTP/1.1';

    my $s = connect_socket(%o) or return { error => "connect: $!" };

    my $req = "$method $path $proto\r\nHost: " . ($o{host_header} || 'localhost') . "\r\n";
    my $has_cl = 0;
    my $chunked = $o{chunked};
    for my $h (@{ $o{headers} || [] }) {
        $req .= "$h\r\n";
        $has_cl = 1 if $h =~ /^content-length:/i;
    }
    if (defined $body) {
        if ($chunked) {
            $req .= "Transfer-Encoding: chunked\r\n";
        } elsif (!$has_cl) {
            $req .= "Content-Length: " . length($body) . "\r\n";
        }
    }
    $req .= "Connection: close\r\n" unless $o{keepalive};
    $req .= "\r\n";
    if (defined $body) {
        if ($chunked) {
            my $sz = $chunked =~ /^\d+$/ && $chunked > 1 ? $chunked : 1024;
            for (my $i = 0; $i < length $body; $i += $sz) {
                my $c = substr($body, $i, $sz);
                $req .= sprintf("%x\r\n%s\r\n", length $c, $c);
            }
            $req .= "0\r\n\r\n";
        } else {
            $req .= $body;
        }
    }
    write_all($s, $req, $timeout) or return { error => "write failed" };

    my $buf = '';
    my $deadline = time + $timeout;
    my @head;
    while (!(@head = parse_head($buf))) {
        my $n = read_some($s, \$buf, $deadline - time);
        return { error => defined $n ? 'eof before headers' : 'timeout', raw => $buf }
            unless $n;
    }
    my ($status, $sl, $h, $list, $hl) = @head;
    my $r = { status => $status, status_line => $sl, headers => $h,
              header_list => $list, raw_head => substr($buf, 0, $hl) };
    my $rest = substr($buf, $hl);

    if ($method eq 'HEAD' || $status == 204 || $status == 304 || $status =~ /^1/) {
        $r->{body} = '';
    } elsif (($h->{'transfer-encoding'} || '') =~ /chunked/i) {
        my $body_out = '';
        while (1) {
            my ($d, $fin) = dechunk(\$rest);
            $body_out .= $d;
            last if $fin;
            my $n = read_some($s, \$rest, $deadline - time);
            if (!$n) { $r->{error} = defined $n ? 'eof in chunked body' : 'timeout'; last }
        }
        $r->{body} = $body_out;
    } elsif (defined $h->{'content-length'}) {
        my $cl = $h->{'content-length'};
        while (length $rest < $cl) {
            my $n = read_some($s, \$rest, $deadline - time);
            if (!$n) { $r->{error} = defined $n ? 'eof in body' : 'timeout'; last }
        }
        $r->{body} = $rest;
    } else {
        while (1) {
            my $n = read_some($s, \$rest, $deadline - time);
            if (!defined $n) { $r->{error} = 'timeout'; last }
            last if $n == 0;
        }
        $r->{body} = $rest;
    }
    close $s;
    if (defined $r->{body} && ($h->{'content-type'} || '') =~ /json/i) {
        $r->{json} = eval { $JSON->decode($r->{body}) };
    }
    return $r;
}

sub post_json {
    my ($port, $path, $body, %o) = @_;
    $body = $JSON->encode($body) if ref $body;
    my @h = @{ delete $o{headers} || [] };
    unshift @h, 'Content-Type: application/json' unless grep { /^content-type:/i } @h;
    return request(port => $port, method => 'POST', path => $path,
        headers => \@h, body => $body, %o);
}

1;
