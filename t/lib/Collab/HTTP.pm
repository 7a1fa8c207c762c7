package Collab::HTTP;

# Raw HTTP/1.1 over a loopback socket: no keep-alive games, no CPAN.
#
#   my $r = Collab::HTTP::request(port => $p, method => 'POST', path => '/collab',
#       headers => ['Content-Type: application/json'], body => $json, timeout => 5);
#   $r->{status}, $r->{status_line}, $r->{headers}{lc name}, $r->{body}, $r->{raw}
#
#   Collab::HTTP::post_json($port, $path, $body_text_or_ref, %opts)
#       => same, plus $r->{json} when the body decodes.

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(time);
use JSON::PP;

our $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

sub connect_socket {
    my (%o) = @_;
    my $s = IO::Socket::INET->new(
        PeerAddr => $o{host} || '127.0.0.1',
        PeerPort => $o{port},
        Proto    => 'tcp',
        Timeout  => $o{timeout} || 5,
    ) or return undef;
    $s->autoflush(1);
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    binmode $s;
    return $s;
}

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
        my $sel = IO::Select->new($s);
        next unless $sel->can_write($left);
        my $n = syswrite($s, $data, length($data) - $off, $off);
        return undef unless defined $n && $n > 0;
        $off += $n;
    }
    return 1;
}

# read at most one chunk into $$bufref; returns bytes read, 0 on EOF,
# undef on timeout / error
sub read_some {
    my ($s, $bufref, $timeout) = @_;
    my $sel = IO::Select->new($s);
    return undef unless $sel->can_read($timeout < 0 ? 0 : $timeout);
    my $n = sysread($s, my $chunk, 65536);
    return undef unless defined $n;
    $$bufref .= $chunk if $n;
    return $n;
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
