package Collab::Test;

# Test harness in the style of nginx-tests: a temp dir per test file, a real
# redis-server and real nginx processes on loopback, error.log at debug level
# and a final check that no [alert]/[emerg]/AddressSanitizer/crash happened.
#
#   my $t = Collab::Test->new(timeout => 60);     # alarm for the whole file
#   $t->start_redis;                               # (appendonly => 1) for AOF
#   $t->write_nginx_conf(<<'EOF');                 # the http{} block content
#       collab_redis 127.0.0.1:%%REDIS_PORT%%;
#       server { listen 127.0.0.1:%%PORT%%; location = /collab { collab; } }
#   EOF
#   $t->start_nginx;                               # name => 'b' for a 2nd one
#   my $ws = $t->ws_session;                       # connected + welcome read
#   ...
#   $t->done; done_testing;
#
# Environment: COLLAB_MODULE (the .so), NGINX_BIN, REDIS_SERVER, COLLAB_ASAN=1,
# COLLAB_ASAN_OPTIONS, COLLAB_KEEP=1 (keep the temp dir), COLLAB_TMPDIR,
# COLLAB_TLS=1 (every listen gets `ssl`, a self-signed certificate made with
# the openssl CLI, and the clients speak TLS; COLLAB_HTTP2=1 adds `http2`).
# new(tls => 1, http2 => 1) does the same for one test file.

use strict;
use warnings;

use Test::More ();
use File::Temp qw(tempdir);
use File::Path qw(rmtree);
use File::Basename qw(dirname);
use Cwd qw(abs_path);
use IO::Socket::INET;
use IO::Select;
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);
use JSON::PP;

use Collab::HTTP;
use Collab::WS;
use Collab::SSE;

our $REPO = abs_path(dirname(abs_path(__FILE__)) . '/../../..');
our $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

our %KILL_AT_END;        # pid => 1: processes to kill if the script dies
our $OWNER = $$;
my %USED_PORTS;

sub module_path {
    my $m = $ENV{COLLAB_MODULE} || "$REPO/build/ngx_http_collab_module.so";
    $m = abs_path($m) // $m if -e $m;
    return $m;
}

sub nginx_bin  { $ENV{NGINX_BIN} || '/usr/sbin/nginx' }
sub redis_bin  { $ENV{REDIS_SERVER} || 'redis-server' }

sub free_port {
    for (1 .. 50) {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
            Proto => 'tcp', Listen => 1, ReuseAddr => 1) or next;
        my $p = $s->sockport;
        close $s;
        next if $USED_PORTS{$p}++;
        return $p;
    }
    die "no free port";
}

sub port_open {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
        Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

sub new {
    my ($class, %o) = @_;
    my $base = $ENV{COLLAB_TMPDIR} || "$REPO/t/tmp";
    -d $base or mkdir $base or die "mkdir $base: $!";
    my $name = $0;
    $name =~ s{.*/}{};
    $name =~ s{\.t$}{};
    $name =~ s{[^A-Za-z0-9_-]}{_}g;
    my $dir = tempdir("$name-XXXXXX", DIR => $base, CLEANUP => 0);
    chmod 0755, $dir;
    my $self = bless {
        opts => \%o,
        dir => $dir,
        owner => $$,
        nginx => {},
        redis_port => $o{redis_port},
        own_redis => 0,
        allow => [],
        done => 0,
    }, $class;
    $ENV{COLLAB_TLS} = 1 if $o{tls};
    $ENV{COLLAB_HTTP2} = 1 if $o{http2};

    if (my $secs = exists $o{timeout} ? $o{timeout} : 240) {
        $SIG{ALRM} = sub {
            Test::More::fail("test file timed out after ${secs}s");
            eval { $self->_cleanup(1) };
            Test::More::diag("temp dir kept: $self->{dir}");
            POSIX::_exit(255);
        };
        alarm $secs;
    }
    return $self;
}

sub dir        { $_[0]{dir} }
sub tls        { $ENV{COLLAB_TLS} ? 1 : 0 }
sub http2      { $ENV{COLLAB_HTTP2} ? 1 : 0 }
sub scheme     { $_[0]->tls ? 'https' : 'http' }

# a pause that keeps every open WebSocket answering pings (never `sleep`)
sub idle { shift if ref $_[0]; Collab::HTTP::idle($_[0]) }
sub redis_port { $_[0]{redis_port} }
sub testdir    { $_[0]{dir} }

# lines of error.log matching these are not reported by done()
sub allow_log {
    my ($self, @re) = @_;
    push @{ $self->{allow} }, @re;
}

###########################################################################
# redis

sub start_redis {
    my ($self, %o) = @_;
    $self->{redis_port} //= free_port();
    $self->{redis_dir} = "$self->{dir}/redis";
    mkdir $self->{redis_dir};
    $self->{redis_aof} = $o{appendonly} // $self->{opts}{appendonly} // 0;
    $self->{redis_args} = $o{args} || [];
    $self->{own_redis} = 1;
    $self->_spawn_redis;
    $self->wait_redis(10) or die "redis did not answer PING on $self->{redis_port}";
    return $self;
}

sub _spawn_redis {
    my ($self) = @_;
    my @args = (
        '--port', $self->{redis_port}, '--bind', '127.0.0.1',
        '--dir', $self->{redis_dir}, '--save', '',
        '--daemonize', 'no', '--protected-mode', 'no',
        '--logfile', "$self->{redis_dir}/redis.log",
        '--appendonly', $self->{redis_aof} ? 'yes' : 'no',
    );
    push @args, '--appendfsync', 'always' if $self->{redis_aof};
    push @args, @{ $self->{redis_args} };
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{redis_dir}/redis.out";
        open STDERR, '>&', \*STDOUT;
        exec(redis_bin(), @args) or POSIX::_exit(127);
    }
    $self->{redis_pid} = $pid;
    $KILL_AT_END{$pid} = 1;
    delete $self->{rconn};
}

sub wait_redis {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        my ($r, $err) = $self->redis_try('PING');
        return 1 if defined $r && $r eq 'PONG';
        Collab::HTTP::idle(0.05);
    }
    return 0;
}

sub _reap {
    my ($pid, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        return 1 if $r == $pid || $r == -1;
        Collab::HTTP::idle(0.02);
    }
    return 0;
}

sub stop_redis {
    my ($self) = @_;
    my $pid = delete $self->{redis_pid} or return;
    kill 'CONT', $pid;
    kill 'TERM', $pid;
    if (!_reap($pid, 10)) {
        kill 'KILL', $pid;
        _reap($pid, 5);
    }
    delete $KILL_AT_END{$pid};
    delete $self->{rconn};
}

sub kill_redis {
    my ($self) = @_;
    my $pid = delete $self->{redis_pid} or return;
    kill 'KILL', $pid;
    _reap($pid, 5);
    delete $KILL_AT_END{$pid};
    delete $self->{rconn};
}

sub restart_redis {
    my ($self) = @_;
    $self->stop_redis if $self->{redis_pid};
    # the port may linger briefly
    my $deadline = time + 5;
    Collab::HTTP::idle(0.05) while port_open($self->{redis_port}) && time < $deadline;
    $self->_spawn_redis;
    $self->wait_redis(15) or die "redis did not come back";
    return $self;
}

sub freeze_redis { kill 'STOP', $_[0]{redis_pid} }
sub thaw_redis   { kill 'CONT', $_[0]{redis_pid} }
sub redis_pid    { $_[0]{redis_pid} }

# --- more Redis processes: replicas, sentinels (killed with the test)

# Starts redis-server as node $name on a free port and waits for PING;
# sentinel => 1 runs it as a Sentinel with the lines of "conf".  Returns
# the port.
sub redis_node {
    my ($self, $name, %o) = @_;
    my $port = $o{port} // free_port();
    my $dir = "$self->{dir}/node-$name";
    mkdir $dir;
    my @args;
    if ($o{sentinel}) {
        open my $f, '>', "$dir/sentinel.conf" or die "sentinel.conf: $!";
        print $f "port $port\nbind 127.0.0.1\nprotected-mode no\ndir $dir\n"
            . "logfile $dir/redis.log\n", map { "$_\n" } @{ $o{conf} || [] };
        close $f;
        @args = ("$dir/sentinel.conf", '--sentinel');
    } else {
        @args = ('--port', $port, '--bind', '127.0.0.1', '--dir', $dir,
                 '--save', '', '--daemonize', 'no', '--protected-mode', 'no',
                 '--logfile', "$dir/redis.log", @{ $o{args} || [] });
    }
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/redis.out";
        open STDERR, '>&', \*STDOUT;
        exec(redis_bin(), @args) or POSIX::_exit(127);
    }
    $KILL_AT_END{$pid} = 1;
    $self->{nodes}{$name} = { pid => $pid, port => $port, dir => $dir };
    my $deadline = time + 15;
    until ((($self->redis_at_try($port, 'PING'))[0] // '') eq 'PONG') {
        die "redis node $name did not answer PING on $port\n" if time > $deadline;
        Collab::HTTP::idle(0.05);
    }
    return $port;
}

# --- Redis Cluster: nodes whose cluster bus port (port + 10000) is free too

sub cluster_port {
    for (1 .. 200) {
        my $p = free_port();
        next if $p > 55535;
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $p + 10000,
            Proto => 'tcp', Listen => 1, ReuseAddr => 1) or next;
        close $s;
        return $p;
    }
    die "no free port pair for a cluster node";
}

# primaries => 3, replicas => 1 (per primary), node_timeout => ms: starts
# the nodes c0, c1, ..., runs `redis-cli --cluster create` and waits until
# every node says cluster_state:ok.  Returns the node names.
sub redis_cluster {
    my ($self, %o) = @_;
    my $reps = $o{replicas} // 1;
    my @names = map { "c$_" } 0 .. ($o{primaries} // 3) * (1 + $reps) - 1;
    for my $name (@names) {
        $self->redis_node($name, port => cluster_port(), args => [
            '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf',
            '--cluster-node-timeout', $o{node_timeout} // 2000,
            '--repl-diskless-sync-delay', '0', @{ $o{args} || [] }]);
    }
    my @addrs = map { '127.0.0.1:' . $self->node_port($_) } @names;
    my $out = "$self->{dir}/cluster-create.out";
    system("redis-cli --cluster create @addrs --cluster-replicas $reps --cluster-yes"
           . " >$out 2>&1") == 0
        or die "redis-cli --cluster create failed: " . _slurp($out);
    $self->cluster_wait(30) or die "the cluster did not reach cluster_state:ok
";
    return @names;
}

# every node that answers says cluster_state:ok and knows every slot
sub cluster_wait {
    my ($self, $timeout) = @_;
    return wait_until(sub {
        for my $n (values %{ $self->{nodes} }) {
            my ($i) = $self->redis_at_try($n->{port}, 'CLUSTER', 'INFO');
            return 0 unless defined $i && $i =~ /cluster_state:ok/
                && $i =~ /cluster_slots_ok:16384/;
        }
        return 1;
    }, $timeout // 30);
}

# the node name that serves a slot as primary (asked of any live node)
sub cluster_owner {
    my ($self, $slot) = @_;
    for my $n (sort keys %{ $self->{nodes} }) {
        my ($r) = $self->redis_at_try($self->{nodes}{$n}{port}, 'CLUSTER', 'SLOTS');
        next unless ref $r;
        for my $range (@$r) {
            next unless $slot >= $range->[0] && $slot <= $range->[1];
            my $port = $range->[2][1];
            for my $m (keys %{ $self->{nodes} }) {
                return $m if $self->{nodes}{$m}{port} == $port;
            }
        }
    }
    return undef;
}

sub node_port { $_[0]{nodes}{ $_[1] }{port} }
sub node_dir  { $_[0]{nodes}{ $_[1] }{dir} }

# signal a node (default KILL); KILL and TERM also reap it
sub kill_node {
    my ($self, $name, $sig) = @_;
    my $n = $self->{nodes}{$name} or return;
    $sig //= 'KILL';
    kill 'CONT', $n->{pid} if $sig eq 'KILL' || $sig eq 'TERM';
    kill $sig, $n->{pid};
    return unless $sig eq 'KILL' || $sig eq 'TERM';
    _reap($n->{pid}, 10) or do { kill 'KILL', $n->{pid}; _reap($n->{pid}, 5) };
    delete $KILL_AT_END{ $n->{pid} };
    delete $self->{nodes}{$name};
}

sub stop_nodes {
    my ($self) = @_;
    $self->kill_node($_, 'TERM') for keys %{ $self->{nodes} || {} };
}

# one command on a fresh connection to any port: ($reply, $error)
sub redis_at_try {
    my ($self, $port, @cmd) = @_;
    my $r = eval {
        my $s = Collab::HTTP::connect_socket(port => $port, timeout => 2, tls => 0)
            or die "connect to $port: $!\n";
        my $c = { sock => $s, buf => '' };
        Collab::HTTP::write_all($s, _resp_encode(@cmd), 5) or die "write failed\n";
        my $reply = _resp_read($c, time + 5);
        close $s;
        $reply;
    };
    return (undef, $@) if $@;
    return (undef, $r->{err}) if ref $r eq 'Collab::Test::RedisError';
    return ($r, undef);
}

sub redis_at {
    my ($self, $port, @cmd) = @_;
    my ($r, $err) = $self->redis_at_try($port, @cmd);
    die "redis :$port @cmd: $err" if defined $err;
    return $r;
}

# --- a delaying TCP proxy (tc netem is not available)

# Forwards 127.0.0.1:<returned port> to port "to", delaying what each side
# sends by "up" (client to server) and "down" (server to client) seconds.
# A connection whose first bytes match "fast" is not delayed at all (e.g.
# qr/SUBSCRIBE/ for a Redis subscriber connection).  Order within a
# connection is kept; the proxy is killed with the test.
sub delay_proxy {
    my ($self, %o) = @_;
    my $port = free_port();
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                                  Listen => 64, ReuseAddr => 1, Proto => 'tcp')
        or die "delay_proxy: listen on $port: $!";
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid) {
        close $l;
        $KILL_AT_END{$pid} = 1;
        push @{ $self->{proxies} }, $pid;
        return $port;
    }
    _proxy_loop($l, $o{to}, $o{up} // 0, $o{down} // 0, $o{fast});
    POSIX::_exit(0);
}

sub _proxy_loop {
    my ($l, $to, $up, $down, $fast) = @_;
    my (%peer, %delay, %queue, %classified);
    my $sel = IO::Select->new($l);
    $SIG{TERM} = sub { POSIX::_exit(0) };
    $SIG{PIPE} = 'IGNORE';
    for (;;) {
        my $now = Time::HiRes::time();
        my $next = 1;
        for my $fd (keys %queue) {
            my $q = $queue{$fd};
            while (@$q && $q->[0][0] <= $now) {
                my $item = shift @$q;
                my $dst = $peer{$fd} or last;
                if (!defined $item->[1]) { shutdown($dst->[1], 1); next }
                my ($d, $off) = ($item->[1], 0);
                while ($off < length $d) {
                    my $w = syswrite($dst->[1], $d, length($d) - $off, $off);
                    last unless $w;
                    $off += $w;
                }
            }
            $next = $q->[0][0] - $now if @$q && $q->[0][0] - $now < $next;
        }
        $next = 0.001 if $next < 0.001;
        my @ready = $sel->can_read($next);
        # what was read is delayed from now, not from before the wait
        $now = Time::HiRes::time();
        for my $s (@ready) {
            if ($s == $l) {
                my $c = $l->accept or next;
                my $r = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $to,
                                              Proto => 'tcp');
                if (!$r) { close $c; next }
                $_->autoflush(1) for $c, $r;
                setsockopt($_, IPPROTO_TCP, TCP_NODELAY, 1) for $c, $r;
                $peer{ fileno $c } = [$c, $r];
                $peer{ fileno $r } = [$r, $c];
                $delay{ fileno $c } = $up;
                $delay{ fileno $r } = $down;
                $classified{ fileno $c } = !defined $fast;
                $queue{$_} = [] for fileno $c, fileno $r;
                $sel->add($c, $r);
                next;
            }
            my $fd = fileno $s;
            my $buf;
            my $n = sysread($s, $buf, 65536);
            next if !defined $n && Collab::HTTP::_again();
            my $p = $peer{$fd} or next;
            if (!$classified{$fd} && exists $classified{$fd}) {
                $classified{$fd} = 1;
                if ($n && $buf =~ $fast) {
                    $delay{$fd} = 0;
                    $delay{ fileno $p->[1] } = 0;
                }
            }
            if (!$n) {
                # EOF or error: the other side is told once the queue is out
                $sel->remove($s);
                push @{ $queue{$fd} }, [$now + $delay{$fd}, undef];
                next;
            }
            push @{ $queue{$fd} }, [$now + $delay{$fd}, $buf];
        }
    }
}

sub stop_proxies {
    my ($self) = @_;
    for my $pid (@{ delete $self->{proxies} || [] }) {
        kill 'TERM', $pid;
        _reap($pid, 5);
        delete $KILL_AT_END{$pid};
    }
}

# --- minimal RESP client

sub _resp_encode {
    my @a = @_;
    my $s = '*' . scalar(@a) . "\r\n";
    for my $x (@a) {
        my $b = "$x";
        utf8::encode($b) if utf8::is_utf8($b);
        $s .= '$' . length($b) . "\r\n$b\r\n";
    }
    return $s;
}

sub _resp_line {
    my ($c, $deadline) = @_;
    while (1) {
        my $i = index($c->{buf}, "\r\n");
        if ($i >= 0) {
            my $l = substr($c->{buf}, 0, $i);
            substr($c->{buf}, 0, $i + 2) = '';
            return $l;
        }
        my $n = Collab::HTTP::read_some($c->{sock}, \$c->{buf}, $deadline - time);
        die "redis: " . (defined $n ? 'connection closed' : 'timeout') . "\n" unless $n;
    }
}

sub _resp_read {
    my ($c, $deadline) = @_;
    my $l = _resp_line($c, $deadline);
    my $t = substr($l, 0, 1, '');
    if ($t eq '+') { return $l }
    if ($t eq '-') { return bless { err => $l }, 'Collab::Test::RedisError' }
    if ($t eq ':') { return 0 + $l }
    if ($t eq '$') {
        return undef if $l < 0;
        while (length $c->{buf} < $l + 2) {
            my $n = Collab::HTTP::read_some($c->{sock}, \$c->{buf}, $deadline - time);
            die "redis: short bulk\n" unless $n;
        }
        my $v = substr($c->{buf}, 0, $l);
        substr($c->{buf}, 0, $l + 2) = '';
        return $v;
    }
    if ($t eq '*') {
        return undef if $l < 0;
        return [map { _resp_read($c, $deadline) } 1 .. $l];
    }
    die "redis: bad reply type '$t'\n";
}

# ($reply, $error): never dies
sub redis_try {
    my ($self, @cmd) = @_;
    my $timeout = 5;
    my $r = eval {
        my $c = $self->{rconn};
        if (!$c) {
            my $s = Collab::HTTP::connect_socket(port => $self->{redis_port}, timeout => 2,
                tls => 0)
                or die "redis connect: $!\n";
            $c = $self->{rconn} = { sock => $s, buf => '' };
        }
        Collab::HTTP::write_all($c->{sock}, _resp_encode(@cmd), $timeout)
            or die "redis write failed\n";
        _resp_read($c, time + $timeout);
    };
    if ($@) {
        delete $self->{rconn};
        return (undef, $@);
    }
    return (undef, $r->{err}) if ref $r eq 'Collab::Test::RedisError';
    return ($r, undef);
}

# the reply; dies on a connection problem or an error reply
sub redis {
    my ($self, @cmd) = @_;
    my ($r, $err) = $self->redis_try(@cmd);
    die "redis @cmd: $err" if defined $err;
    return $r;
}

# entries of collab:{doc}:log as hashes (fields + _id)
sub log_entries {
    my ($self, $doc) = @_;
    my $r = $self->redis('XRANGE', "collab:{$doc}:log", '-', '+');
    my @out;
    for my $e (@$r) {
        my %h = @{ $e->[1] };
        $h{_id} = $e->[0];
        push @out, \%h;
    }
    return @out;
}

sub log_len {
    my ($self, $doc) = @_;
    return $self->redis('XLEN', "collab:{$doc}:log");
}

###########################################################################
# nginx

sub _inst {
    my ($self, $name) = @_;
    $name //= 'main';
    return $self->{nginx}{$name} //= do {
        my $d = $name eq 'main' ? $self->{dir} : "$self->{dir}/$name";
        mkdir $d;
        chmod 0755, $d;
        { name => $name, dir => $d, port => free_port(), port2 => free_port(),
          port3 => free_port(), opts => {} };
    };
}

sub port  { $_[0]->_inst($_[1])->{port} }
sub port2 { $_[0]->_inst($_[1])->{port2} }
sub port3 { $_[0]->_inst($_[1])->{port3} }
sub instances { sort keys %{ $_[0]{nginx} } }

sub asan_env {
    my ($self) = @_;
    return () unless $ENV{COLLAB_ASAN};
    my $lib = $ENV{COLLAB_ASAN_LIB} // do {
        my $l = `gcc -print-file-name=libasan.so 2>/dev/null`;
        chomp $l;
        $l;
    };
    # the one place that decides ASAN_OPTIONS for nginx under test
    my $opts = $ENV{COLLAB_ASAN_OPTIONS} // $ENV{ASAN_OPTIONS} // 'detect_leaks=0';
    $opts .= ':abort_on_error=0' unless $opts =~ /abort_on_error=/;
    $opts .= ":log_path=$self->{dir}/asan" unless $opts =~ /log_path=/;
    return (LD_PRELOAD => $lib, ASAN_OPTIONS => $opts);
}

sub _subst {
    my ($self, $text, $inst) = @_;
    my %v = (
        PORT => $inst->{port},
        PORT2 => $inst->{port2},
        PORT3 => $inst->{port3} // 0,
        REDIS_PORT => $self->{redis_port} // 0,
        TESTDIR => $self->{dir},
        DIR => $inst->{dir},
    );
    if ($text =~ /%%SSL_(CERT|KEY)%%/) {
        @v{qw(SSL_CERT SSL_KEY)} = $self->tls_cert;
    }
    for my $n ($self->instances) {
        my $i = $self->{nginx}{$n};
        $v{"PORT_$n"} = $i->{port};
    }
    $text =~ s/%%([A-Za-z0-9_]+)%%/exists $v{$1} ? $v{$1} : die "unknown placeholder %%$1%%"/ge;
    return $text;
}

sub _conf_text {
    my ($self, $inst, $http, %o) = @_;
    my $d = $inst->{dir};
    my $workers = $o{workers} // $self->{opts}{workers} // 1;
    my $module = module_path();
    my $c = '';
    if ($o{module} // 1) {
        if (!-f $module) {
            Test::More::fail("module $module exists (run `make build` first)");
            die "module $module missing\n";
        }
        $c .= "load_module $module;\n";
    }
    $c .= "daemon on;\nmaster_process on;\nworker_processes $workers;\n";
    $c .= "user root;\n" if $> == 0;
    $c .= "error_log $d/error.log debug;\npid $d/nginx.pid;\n";
    $c .= $o{main} . "\n" if defined $o{main};
    $c .= "events {\n    worker_connections 4096;\n}\n";
    $c .= "http {\n";
    $c .= "    access_log $d/access.log;\n";
    $c .= "    client_body_temp_path $d/client_body_temp;\n";
    $c .= "    proxy_temp_path $d/proxy_temp;\n";
    $c .= "    fastcgi_temp_path $d/fastcgi_temp;\n";
    $c .= "    uwsgi_temp_path $d/uwsgi_temp;\n";
    $c .= "    scgi_temp_path $d/scgi_temp;\n";
    my $body = $self->_subst($http, $inst);
    if ($self->tls) {
        my ($crt, $key) = $self->tls_cert;
        $c .= "    ssl_certificate $crt;\n    ssl_certificate_key $key;\n";
        my $extra = ' ssl' . ($self->http2 ? ' http2' : '');
        # (a listen line that ends with the comment `# no-tls` stays plain)
        $body =~ s/^(\s*listen\s+(?:(?!\bssl\b)[^;])*?)\s*;(?![^\n]*#\s*no-tls)/$1$extra;/mg;
    }
    $c .= $body;
    $c .= "\n}\n";
    return $c;
}

# write nginx.conf of an instance (name => 'b'; workers => N; main => text
# for the main context; module => 0 for plain nginx)
sub write_nginx_conf {
    my ($self, $http, %o) = @_;
    my $inst = $self->_inst($o{name});
    $inst->{http} = $http;
    $inst->{opts} = { %{ $inst->{opts} }, %o };
    my $text = $self->_conf_text($inst, $http, %{ $inst->{opts} });
    open my $fh, '>', "$inst->{dir}/nginx.conf" or die "$!";
    print $fh $text;
    close $fh;
    return "$inst->{dir}/nginx.conf";
}

sub _run_nginx {
    my ($self, $inst, @args) = @_;
    my %env = $self->asan_env;
    local @ENV{ keys %env } = values %env;
    my $out = "$inst->{dir}/nginx.out";
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $out;
        open STDERR, '>&', \*STDOUT;
        exec(nginx_bin(), '-p', "$inst->{dir}/", '-c', "$inst->{dir}/nginx.conf", @args)
            or POSIX::_exit(127);
    }
    waitpid($pid, 0);
    return $? >> 8;
}

sub master_pid {
    my ($self, $name) = @_;
    my $inst = $self->_inst($name);
    open my $fh, '<', "$inst->{dir}/nginx.pid" or return undef;
    my $p = <$fh>;
    close $fh;
    return undef unless defined $p && $p =~ /(\d+)/;
    return $1;
}

sub _children {
    my ($ppid) = @_;
    return () unless $ppid;
    my @p = grep { /\d/ } split /\s+/, `ps --no-headers --ppid $ppid -o pid= 2>/dev/null`;
    return @p;
}

sub worker_pids {
    my ($self, $name) = @_;
    return _children($self->master_pid($name));
}

# (master, workers...)
sub nginx_pids {
    my ($self, $name) = @_;
    my $m = $self->master_pid($name) or return ();
    return ($m, _children($m));
}

sub rss_kb {
    my ($self, $pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return undef;
    while (<$fh>) {
        return $1 if /^VmRSS:\s+(\d+)/;
    }
    return undef;
}

sub start_nginx {
    my ($self, %o) = @_;
    my $inst = $self->_inst($o{name});
    my $http = delete $o{conf};
    my %wo = %o;
    delete @wo{qw(name settle)};
    if (defined $http || %wo || !-f "$inst->{dir}/nginx.conf") {
        $http //= $inst->{http} // $self->{nginx}{main}{http}
            // die "start_nginx: no configuration written";
        my %mo = (%{ $self->{nginx}{main}{opts} || {} }, %{ $inst->{opts} }, %wo);
        $self->write_nginx_conf($http, %mo, name => $inst->{name});
    }
    unlink "$inst->{dir}/nginx.pid";
    $inst->{log_off} = -s "$inst->{dir}/error.log" // 0;
    my $rc = $self->_run_nginx($inst);
    if ($rc != 0) {
        my $out = _slurp("$inst->{dir}/nginx.out");
        Test::More::diag("nginx failed to start (exit $rc):\n$out");
        die "nginx ($inst->{name}) failed to start\n";
    }
    my $deadline = time + 10;
    my $master;
    while (time < $deadline) {
        $master = $self->master_pid($inst->{name});
        last if $master;
        Collab::HTTP::idle(0.02);
    }
    die "nginx ($inst->{name}): no pid file" unless $master;
    $KILL_AT_END{$master} = 1;
    $inst->{master} = $master;
    my $want = $inst->{opts}{workers} // $self->{opts}{workers} // 1;
    while (time < $deadline) {
        last if _children($master) >= $want && port_open($inst->{port});
        Collab::HTTP::idle(0.02);
    }
    $inst->{running} = 1;

    # let the workers connect to Redis before the test talks to them (up to
    # 1s, by the module's info line); tests of the start-up window itself
    # pass settle => 0
    if ($o{settle} // 1) {
        my $log = "$inst->{dir}/error.log";
        my $off = $inst->{log_off} // 0;
        my $end = time + 1;
        while (time < $end) {
            my $text = _slurp($log);
            my $n = () = substr($text, $off > length $text ? 0 : $off)
                =~ /collab: redis command connection ready/g;
            last if $n >= $want;
            Collab::HTTP::idle(0.02);
        }
    }
    $inst->{log_off} = -s "$inst->{dir}/error.log";
    return $self;
}

# SIGHUP; waits until new workers exist.  Returns the old worker pids.
sub reload_nginx {
    my ($self, %o) = @_;
    my $inst = $self->_inst($o{name});
    my $master = $self->master_pid($inst->{name}) or die "no master";
    my %old = map { $_ => 1 } _children($master);
    if ($o{conf}) {
        $self->write_nginx_conf($o{conf}, name => $inst->{name});
    }
    kill 'HUP', $master;
    my $want = $inst->{opts}{workers} // $self->{opts}{workers} // 1;
    my $deadline = time + 10;
    while (time < $deadline) {
        my @new = grep { !$old{$_} } _children($master);
        last if @new >= $want;
        Collab::HTTP::idle(0.02);
    }
    # and until the old workers stopped accepting: they retitle themselves
    # "worker process is shutting down" right before closing the listeners
    while (time < $deadline) {
        my $busy = grep {
            my $c = _slurp("/proc/$_/cmdline");
            length $c && $c !~ /shutting down/
        } keys %old;
        last unless $busy;
        Collab::HTTP::idle(0.02);
    }
    Collab::HTTP::idle(0.05);
    return sort keys %old;
}

sub _wait_gone {
    my ($pid, $timeout) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        return 1 unless kill 0, $pid;
        # a zombie of ours?
        waitpid($pid, WNOHANG);
        Collab::HTTP::idle(0.02);
    }
    return !kill 0, $pid;
}

sub pid_alive {
    my ($self, $pid) = @_;
    return 0 unless kill 0, $pid;
    open my $fh, '<', "/proc/$pid/stat" or return 0;
    my $st = <$fh>;
    return 0 if $st && $st =~ /^\d+ \(.*?\) Z/;
    return 1;
}

# graceful quit; 1 if the master exited within timeout
sub quit_nginx {
    my ($self, %o) = @_;
    my $inst = $self->_inst($o{name});
    my $master = $inst->{master} or return 1;
    kill 'QUIT', $master;
    my $ok = _wait_gone($master, $o{timeout} // 10);
    if ($ok) {
        $inst->{running} = 0;
        delete $KILL_AT_END{$master};
    }
    return $ok;
}

# fast stop (TERM, then KILL); 1 if it stopped without KILL
sub stop_nginx {
    my ($self, %o) = @_;
    my $inst = $self->_inst($o{name});
    my $master = $inst->{master} or return 1;
    return 1 unless $inst->{running};
    my @all = ($master, _children($master));
    kill 'TERM', $master;
    my $ok = _wait_gone($master, $o{timeout} // 10);
    if (!$ok) {
        kill 'KILL', @all, _children($master);
        _wait_gone($master, 2);
    }
    $inst->{running} = 0;
    delete $KILL_AT_END{$master};
    return $ok;
}

# run nginx -t on a configuration; returns (exit code, output).
# $conf is the http block content, or a complete nginx.conf with raw => 1
sub check_nginx_conf {
    my ($self, $conf, %o) = @_;
    my $n = ++$self->{checks};
    my $inst = { name => "check$n", dir => "$self->{dir}/check-$n",
                 port => free_port(), port2 => free_port(), port3 => free_port() };
    mkdir $inst->{dir};
    chmod 0755, $inst->{dir};
    my $text;
    if ($o{raw}) {
        $text = $self->_subst($conf, $inst);
        my $module = module_path();
        $text =~ s/%%MODULE%%/$module/g;
    } else {
        $text = $self->_conf_text($inst, $conf, %o);
    }
    open my $fh, '>', "$inst->{dir}/nginx.conf" or die "$!";
    print $fh $text;
    close $fh;
    my $rc = $self->_run_nginx($inst, '-t');
    my $out = _slurp("$inst->{dir}/nginx.out");
    return ($rc, $out);
}

###########################################################################
# clients

sub ws {
    my ($self, %o) = @_;
    my $inst = $self->_inst(delete $o{instance});
    return Collab::WS->new(port => $inst->{port}, %o);
}

# a connected WebSocket that got its welcome (dies otherwise)
sub ws_session {
    my ($self, %o) = @_;
    my $ws = $self->ws(%o);
    die "ws handshake failed: " . ($ws->status_line // '?') . "\n" unless $ws->ok;
    my $w = $ws->wait_for('welcome', $o{timeout} // 5)
        or die "no welcome message\n";
    $ws->{welcome} = $w;
    return $ws;
}

# subscribe and return the `subscribed` message (undef on timeout)
sub subscribe {
    my ($self, $ws, $doc, %o) = @_;
    $ws->send_json({ type => 'subscribe', doc => $doc, %o });
    return $ws->wait_for(sub {
        my $m = shift;
        ($m->{type} eq 'subscribed' || $m->{type} eq 'error') && ($m->{doc} // $doc) eq $doc
    }, 5);
}

sub sse {
    my ($self, %o) = @_;
    my $inst = $self->_inst(delete $o{instance});
    return Collab::SSE->new(port => $inst->{port}, %o);
}

sub post {
    my ($self, $path, $body, %o) = @_;
    my $inst = $self->_inst(delete $o{instance});
    return Collab::HTTP::post_json($inst->{port}, $path, $body, %o);
}

sub http {
    my ($self, %o) = @_;
    my $inst = $self->_inst(delete $o{instance});
    return Collab::HTTP::request(port => $inst->{port}, %o);
}

# curl (HTTP/2 tests): curl_start(@args) runs `curl -sS -k @args` in the
# background, stdout to $c->{out}, stderr to $c->{err}; curl_wait($c, secs)
# reaps it (1 if it ended, exit code in $c->{rc}); curl_stop($c) ends it
# (SIGTERM); curl(@args) runs it to the end: ($rc, $stdout, $stderr).
sub curl_start {
    my ($self, @args) = @_;
    my $base = "$self->{dir}/curl-" . ++$self->{curl_n};
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$base.out";
        open STDERR, '>', "$base.err";
        exec('curl', '-sS', '-k', @args) or POSIX::_exit(127);
    }
    $KILL_AT_END{$pid} = 1;
    return { pid => $pid, out => "$base.out", err => "$base.err", base => $base };
}

sub curl_wait {
    my ($self, $c, $timeout) = @_;
    return 1 if defined $c->{rc};
    _reap($c->{pid}, $timeout // 10) or return 0;
    $c->{rc} = $? >> 8;
    delete $KILL_AT_END{ $c->{pid} };
    return 1;
}

sub curl_stop {
    my ($self, $c) = @_;
    return 1 if defined $c->{rc};
    kill 'TERM', $c->{pid};
    return $self->curl_wait($c, 5) || do { kill 'KILL', $c->{pid}; $self->curl_wait($c, 2) };
}

sub curl {
    my ($self, @args) = @_;
    my $c = $self->curl_start(@args);
    $self->curl_wait($c, 60) or $self->curl_stop($c);
    return ($c->{rc}, _slurp($c->{out}), _slurp($c->{err}));
}

sub slurp { shift if ref $_[0]; _slurp(@_) }

###########################################################################
# the end

sub _slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    my $s = <$fh>;
    close $fh;
    return $s;
}

sub error_log {
    my ($self, $name) = @_;
    return _slurp($self->_inst($name)->{dir} . '/error.log');
}

# lines of all error logs matching $re
sub grep_error_log {
    my ($self, $re) = @_;
    my @out;
    for my $n ($self->instances) {
        push @out, grep { $_ =~ $re } split /\n/, $self->error_log($n);
    }
    return @out;
}

sub _cleanup {
    my ($self, $quiet) = @_;
    my $ok = 1;
    for my $n ($self->instances) {
        my $inst = $self->{nginx}{$n};
        next unless $inst->{running};
        if (!$self->quit_nginx(name => $n, timeout => 8)) {
            $ok = 0;
            Test::More::diag("nginx '$n' did not quit within 8s; stopping it") unless $quiet;
            $self->stop_nginx(name => $n, timeout => 3);
        }
    }
    $self->stop_proxies;
    $self->stop_nodes;
    $self->stop_redis if $self->{own_redis};
    return $ok;
}

# stop everything, then check logs; emits test results
sub done {
    my ($self) = @_;
    return if $self->{done}++;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    alarm 0;
    my $quit_ok = $self->_cleanup;
    Test::More::ok($quit_ok, 'nginx quit gracefully at the end');

    my (@bad, @crash);
    for my $n ($self->instances) {
        my $log = $self->error_log($n);
        LINE: for my $l (split /\n/, $log) {
            next unless $l =~ /\[(alert|emerg)\]|AddressSanitizer|exited on signal/;
            for my $re (@{ $self->{allow} }) { next LINE if $l =~ $re }
            if ($l =~ /exited on signal/) { push @crash, "$n: $l" }
            else { push @bad, "$n: $l" }
        }
    }
    my @asan;
    for my $f (glob("$self->{dir}/asan*")) {
        my $s = _slurp($f);
        push @asan, "$f:\n" . substr($s, 0, 4000) if length $s;
    }
    Test::More::ok(!@bad, 'no [alert]/[emerg]/AddressSanitizer in error.log')
        or Test::More::diag(join "\n", @bad[0 .. ($#bad < 30 ? $#bad : 29)]);
    Test::More::ok(!@crash, 'no worker crashed')
        or Test::More::diag(join "\n", @crash);
    if ($ENV{COLLAB_ASAN}) {
        Test::More::ok(!@asan, 'no AddressSanitizer report')
            or Test::More::diag(join "\n", @asan);
    } elsif (@asan) {
        Test::More::fail('no AddressSanitizer report');
        Test::More::diag(join "\n", @asan);
    }

    my $passing = Test::More->builder->is_passing;
    if ($ENV{COLLAB_KEEP} || !$passing) {
        Test::More::diag("temp dir kept: $self->{dir}");
    } else {
        rmtree($self->{dir});
    }
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} == $$;
    return if $self->{done};
    local ($@, $!, $?);
    eval { $self->_cleanup(1) };
}

END {
    if ($$ == $OWNER) {
        local $?;
        for my $pid (keys %KILL_AT_END) {
            kill 'CONT', $pid;
            kill 'KILL', $pid, _children($pid);
        }
    }
}

###########################################################################
# small helpers for tests

# wait until $cond->() is true; returns its value or undef
sub wait_until {
    my ($cond, $timeout, $step) = @_;
    my $deadline = time + ($timeout // 5);
    while (1) {
        my $v = $cond->();
        return $v if $v;
        return undef if time >= $deadline;
        Collab::HTTP::idle($step // 0.05);
    }
}

# compare two lists of scalars; on failure show the first difference only
sub is_list {
    my ($got, $want, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $i = 0;
    $i++ while $i < @$got && $i < @$want && ($got->[$i] // '') eq ($want->[$i] // '');
    my $ok = $i == @$got && $i == @$want;
    Test::More::ok($ok, $name) and return 1;
    my $from = $i > 3 ? $i - 3 : 0;
    my $show = sub {
        my ($l) = @_;
        my $to = $i + 3 < $#$l ? $i + 3 : $#$l;
        return '(' . scalar(@$l) . ' items) ... ' . join(',', map { $_ // 'undef' } @$l[$from .. $to]) . ' ...';
    };
    Test::More::diag("first difference at index $i\n   got: " . $show->($got)
        . "\n  want: " . $show->($want));
    return 0;
}

sub json_encode { $JSON->encode($_[0]) }
sub json_decode { $JSON->decode($_[0]) }

###########################################################################
# JWTs for the auth tests, made with the openssl CLI
#
#   my $k = $t->jwt_keys;        # {hs256 => path, hs256b, hs384, hs512, rsa, rsa2,
#                                #  ec, ed (public keys: "$k->{rsa}.pub" ...)}
#   my $tok = $t->jwt(key => 'rsa', claims => {sub => 'alice', exp => time + 60},
#                     kid => 'r1', header => {alg => 'RS256'}, secret => $bytes);
#
# key: hs256 hs256b hs384 hs512 (HMAC with the secret file), rsa rsa2 (RS256),
# ec (ES256, DER signature turned into R||S), ed (EdDSA); header.alg defaults
# to the key's; secret => BYTES signs with HMAC over those bytes instead.

sub _openssl {
    my ($self, @args) = @_;
    my $log = "$self->{dir}/openssl.log";
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log;
        open STDERR, '>&', \*STDOUT;
        exec('openssl', @args) or POSIX::_exit(127);
    }
    waitpid($pid, 0);
    die "openssl @args failed (see $log)\n" if $?;
}

# a self-signed certificate for 127.0.0.1 (made once per test file):
# returns (certificate file, key file)
sub tls_cert {
    my ($self) = @_;
    my $d = "$self->{dir}/keys";
    if (!-f "$d/tls.crt") {
        mkdir $d;
        $self->_openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt',
            'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=localhost',
            '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
            '-keyout', "$d/tls.key", '-out', "$d/tls.crt");
    }
    return ("$d/tls.crt", "$d/tls.key");
}

sub jwt_keys {
    my ($self) = @_;
    return $self->{jwt_keys} if $self->{jwt_keys};
    my $d = "$self->{dir}/keys";
    mkdir $d;
    my %k;
    for my $h ([hs256 => 32], [hs256b => 32], [hs384 => 48], [hs512 => 64]) {
        $k{ $h->[0] } = "$d/$h->[0].key";
        $self->_openssl('rand', '-out', $k{ $h->[0] }, $h->[1]);
    }
    my %gen = (
        rsa => ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
        rsa2 => ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
        ec => ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'],
        ed => ['-algorithm', 'ed25519'],
    );
    for my $n (sort keys %gen) {
        $k{$n} = "$d/$n.key";
        $self->_openssl('genpkey', @{ $gen{$n} }, '-out', $k{$n});
        $self->_openssl('pkey', '-in', $k{$n}, '-pubout', '-out', "$k{$n}.pub");
    }
    return $self->{jwt_keys} = \%k;
}

sub b64url {
    my ($s) = @_;
    require MIME::Base64;
    $s = MIME::Base64::encode_base64($s, '');
    $s =~ tr{+/}{-_};
    $s =~ s/=+$//;
    return $s;
}

# DER ECDSA-Sig-Value => R||S of 32 bytes each
sub _der_to_raw {
    my ($der) = @_;
    my $p = 0;
    my $len = sub {
        my $l = ord substr($der, $p++, 1);
        return $l if $l < 0x80;
        my $n = $l & 0x7f;
        my $v = 0;
        $v = ($v << 8) | ord substr($der, $p++, 1) for 1 .. $n;
        return $v;
    };
    die "not a DER SEQUENCE\n" unless ord(substr($der, $p++, 1)) == 0x30;
    $len->();
    my $out = '';
    for (1 .. 2) {
        die "not a DER INTEGER\n" unless ord(substr($der, $p++, 1)) == 0x02;
        my $l = $len->();
        my $i = substr($der, $p, $l);
        $p += $l;
        $i =~ s/^\x00+//;
        die "INTEGER longer than 32 bytes\n" if length $i > 32;
        $out .= ("\x00" x (32 - length $i)) . $i;
    }
    return $out;
}

my %JWT_ALG = (hs256 => 'HS256', hs256b => 'HS256', hs384 => 'HS384', hs512 => 'HS512',
               rsa => 'RS256', rsa2 => 'RS256', ec => 'ES256', ed => 'EdDSA');

sub jwt {
    my ($self, %o) = @_;
    my $key = $o{key} // 'hs256';
    my $k = $self->jwt_keys;
    my %h = (alg => $JWT_ALG{$key} // die("unknown key $key\n"), typ => 'JWT');
    $h{kid} = $o{kid} if defined $o{kid};
    %h = (%h, %{ $o{header} || {} });
    delete @h{ grep { !defined $h{$_} } keys %h };
    my $input = b64url($JSON->encode(\%h)) . '.'
        . b64url(ref $o{claims} ? $JSON->encode($o{claims}) : $o{claims} // '{}');
    my $f = "$self->{dir}/keys/input." . ++$self->{jwt_n};
    open my $fh, '>', $f or die "$f: $!";
    binmode $fh;
    print $fh $input;
    close $fh;
    my $sig;
    if (defined $o{secret} || $key =~ /^hs/) {
        my $secret = $o{secret} // _slurp($k->{$key});
        my $md = defined $o{secret} ? 'sha256' : { hs256 => 'sha256', hs256b => 'sha256',
            hs384 => 'sha384', hs512 => 'sha512' }->{$key};
        $self->_openssl('dgst', "-$md", '-mac', 'HMAC', '-macopt',
            'hexkey:' . unpack('H*', $secret), '-binary', '-out', "$f.sig", $f);
        $sig = _slurp("$f.sig");
    } elsif ($key eq 'ed') {
        $self->_openssl('pkeyutl', '-sign', '-inkey', $k->{$key}, '-rawin', '-in', $f,
            '-out', "$f.sig");
        $sig = _slurp("$f.sig");
    } else {
        $self->_openssl('dgst', '-sha256', '-sign', $k->{$key}, '-out', "$f.sig", $f);
        $sig = _slurp("$f.sig");
        $sig = _der_to_raw($sig) if $key eq 'ec';
    }
    unlink $f, "$f.sig";
    return "$input." . b64url($sig);
}

1;
