package Collab::SSE;

# Raw-socket Server-Sent Events client.
#
#   my $sse = Collab::SSE->new(port => $p, path => '/collab?doc=d',
#                              headers => ['Last-Event-ID: E:3']);
#   $sse->status, $sse->header('content-type'), $sse->ok
#   my $ev = $sse->next_event(3);     # {event, id, data, json, time} | undef
#   $sse->next_event(3, comments => 1) also returns {comment => 'ping'}
#   $sse->wait_event({event => 'delta'}, 5)   # skipped events are queued
#   $sse->ended                        # terminal chunk or EOF seen
#   $sse->comments                     # [[time, text], ...] of all comments
#
# Options: path, headers, accept, method, timeout, rcvbuf, tls (default
# COLLAB_TLS).  While it waits, every open Collab::WS keeps answering pings.

use strict;
use warnings;

use Time::HiRes qw(time);
use JSON::PP;
use Collab::HTTP;

our $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        timeout => $o{timeout} || 5,
        raw => '',
        text => '',
        events => [],
        pending => [],
        comments => [],
        ended => 0,
    }, $class;
    my $s = Collab::HTTP::connect_socket(port => $o{port}, timeout => $self->{timeout},
        rcvbuf => $o{rcvbuf}, (exists $o{tls} ? (tls => $o{tls}) : ()))
        or die "sse connect to $o{port}: $!";
    $self->{sock} = $s;
    my $path = $o{path} || '/collab';
    my $accept = exists $o{accept} ? $o{accept} : 'text/event-stream';
    my $req = ($o{method} || 'GET') . " $path HTTP/1.1\r\nHost: 127.0.0.1:$o{port}\r\n";
    $req .= "Accept: $accept\r\n" if defined $accept;
    $req .= "$_\r\n" for @{ $o{headers} || [] };
    $req .= "\r\n";
    Collab::HTTP::write_all($s, $req, $self->{timeout}) or die "sse write failed";

    my $deadline = time + $self->{timeout};
    my $buf = '';
    my @head;
    while (!(@head = Collab::HTTP::parse_head($buf))) {
        my $n = Collab::HTTP::read_some($s, \$buf, $deadline - time);
        if (!$n) {
            $self->{status} = 0;
            $self->{headers} = {};
            $self->{ended} = 1;
            return $self;
        }
    }
    my ($status, $sl, $h, $list, $hl) = @head;
    @$self{qw(status status_line headers)} = ($status, $sl, $h);
    $self->{raw} = substr($buf, $hl);
    $self->{chunked} = (($h->{'transfer-encoding'} || '') =~ /chunked/i) ? 1 : 0;
    if ($status != 200) {
        my $cl = $h->{'content-length'};
        while (!defined $cl || length $self->{raw} < $cl) {
            my $n = Collab::HTTP::read_some($s, \$self->{raw}, 1);
            last unless $n;
        }
        $self->{body} = $self->{raw};
        $self->{ended} = 1;
    } else {
        $self->_feed;    # events that came with the headers
    }
    return $self;
}

sub status   { $_[0]{status} }
sub headers  { $_[0]{headers} }
sub header   { $_[0]{headers}{ lc $_[1] } }
sub body     { $_[0]{body} }
sub ok       { ($_[0]{status} || 0) == 200 }
sub ended    { $_[0]{ended} }
sub chunked  { $_[0]{chunked} }
sub comments { $_[0]{comments} }
sub socket   { $_[0]{sock} }

sub _feed {
    my ($self) = @_;
    if ($self->{chunked}) {
        my ($d, $fin) = Collab::HTTP::dechunk(\$self->{raw});
        $self->{text} .= $d;
        $self->{ended} = 1 if $fin;
    } else {
        $self->{text} .= $self->{raw};
        $self->{raw} = '';
    }
    $self->{text} =~ s/\r\n?/\n/g;
    while ($self->{text} =~ s/^(.*?)\n\n//s) {
        my $block = $1;
        my %ev;
        my @data;
        for my $line (split /\n/, $block) {
            if ($line =~ /^:\s?(.*)$/) {
                push @{ $self->{comments} }, [time, $1];
                push @{ $self->{events} }, { comment => $1, time => time };
                next;
            }
            my ($f, $v) = $line =~ /^([^:]*)(?::\s?(.*))?$/;
            $v = '' unless defined $v;
            if ($f eq 'data') { push @data, $v }
            elsif ($f eq 'event' || $f eq 'id' || $f eq 'retry') { $ev{$f} = $v }
        }
        next unless @data || defined $ev{event} || defined $ev{id};
        $ev{data} = join "\n", @data;
        $ev{event} = 'message' unless defined $ev{event};
        $ev{json} = eval { $JSON->decode($ev{data}) } if length $ev{data};
        $ev{time} = time;
        push @{ $self->{events} }, \%ev;
    }
}

# next event (comments skipped unless comments => 1); undef on timeout/end
sub next_event {
    my ($self, $timeout, %o) = @_;
    $timeout = $self->{timeout} unless defined $timeout;
    my $deadline = time + $timeout;
    while (1) {
        while (my $e = shift @{ $self->{events} }) {
            next if $e->{comment} && !$o{comments};
            return $e;
        }
        return undef if $self->{ended};
        my $left = $deadline - time;
        $left = 0 if $left < 0;
        my $n = Collab::HTTP::read_some($self->{sock}, \$self->{raw}, $left);
        if (defined $n && $n == 0) {
            $self->{eof} = 1;
            $self->{ended} = 1;
        }
        $self->_feed;
        next if @{ $self->{events} } || $self->{ended};
        return undef if !$n && time >= $deadline;
    }
}

sub _match {
    my ($pred, $e) = @_;
    return $pred->($e) if ref $pred eq 'CODE';
    return ($e->{event} // '') eq $pred unless ref $pred;
    for my $k (keys %$pred) {
        my $v = $k eq 'event' || $k eq 'id' ? $e->{$k} : $e->{json} && $e->{json}{$k};
        return 0 unless defined $v && "$v" eq "$pred->{$k}";
    }
    return 1;
}

# first event matching (event name string, coderef, or {event=>..,id=>..,
# json_field=>..}); events skipped meanwhile are queued
sub wait_event {
    my ($self, $pred, $timeout) = @_;
    my $p = $self->{pending};
    for my $i (0 .. $#$p) {
        return splice(@$p, $i, 1) if _match($pred, $p->[$i]);
    }
    my $deadline = time + ($timeout // $self->{timeout});
    while (1) {
        my $left = $deadline - time;
        return undef if $left < 0;
        my $e = $self->next_event($left) or return undef;
        return $e if _match($pred, $e);
        push @$p, $e;
    }
}

sub recv_event {
    my ($self, $timeout) = @_;
    return shift @{ $self->{pending} } if @{ $self->{pending} };
    return $self->next_event($timeout);
}

# wait until the stream ends (terminal chunk or EOF); 1 if it did
sub wait_end {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // $self->{timeout});
    while (!$self->{ended}) {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        my $n = Collab::HTTP::read_some($self->{sock}, \$self->{raw}, $left);
        if (defined $n && $n == 0) { $self->{eof} = 1; $self->{ended} = 1 }
        $self->_feed;
    }
    return 1;
}

sub close {
    my ($self) = @_;
    CORE::close($self->{sock}) if $self->{sock};
    $self->{ended} = 1;
}

1;
