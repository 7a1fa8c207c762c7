#!/usr/bin/perl

# Authorization: roles from ACL documents (collab:{doc}:acl), token grants
# (the "collab" claim, with prefix patterns) and groups; collab_auth variable;
# collab_default_role; live revocation across two nginx instances on one
# Redis, with the propagation time measured; the audit stream
# collab:{doc}:audit (ACL changes, denials, their rate limit).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

my $t = Collab::Test->new(timeout => 200, workers => 2);
$t->jwt_keys;
$t->start_redis;

$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        collab_ping 30s;

        location = /collab {
            collab;
            collab_auth jwt;
            collab_doc $arg_doc;
            collab_rate 500r/s burst=1000;   # the probes below subscribe 100 times
            collab_default_role none;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
        location = /collab-nodef {
            collab;
            collab_auth jwt;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
        location = /collab-def {
            collab;
            collab_auth jwt;
            collab_default_role viewer;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
        location = /collab-var {
            collab;
            collab_auth variable;
            collab_user $http_x_user;
        }
        location = /collab-var-arg {
            collab;
            collab_auth variable;
            collab_user $arg_user;
            collab_default_role commenter;
        }
        location = /collab-off {
            collab;
        }
    }
EOF
$t->start_nginx;
$t->start_nginx(name => 'b');

my $J = Collab::Test->can('json_encode');

sub token {
    my ($user, %c) = @_;
    return $t->jwt(claims => { sub => $user, exp => time + 600, %c });
}

# a WebSocket with its welcome; user => token in the header
sub sess {
    my ($user, %o) = @_;
    my %c = %{ delete $o{claims} || {} };
    my $ws = $t->ws_session(path => $o{path} // '/collab', instance => $o{instance},
        headers => ['Authorization: Bearer ' . token($user, %c)]);
    return $ws;
}

sub set_acl {
    my ($doc, $acl) = @_;
    $t->redis('SET', "collab:{$doc}:acl", $J->(ref $acl ? $acl : $acl));
}
sub announce { $t->redis('PUBLISH', "collab:{$_[0]}", '{"type":"acl"}') }

sub audit {
    my ($doc, $event) = @_;
    my $r = $t->redis('XRANGE', "collab:{$doc}:audit", '-', '+');
    my @out;
    for my $e (@$r) {
        my %h = @{ $e->[1] };
        push @out, \%h if !$event || ($h{event} // '') eq $event;
    }
    return @out;
}

# the reply to one delta (ack or nack)
sub delta {
    my ($ws, $doc, $id, $data) = @_;
    $ws->send_json({ type => 'delta', doc => $doc, id => $id, data => $data // 1 });
    return $ws->wait_for(sub {
        ($_[0]{type} eq 'ack' || $_[0]{type} eq 'nack') && ($_[0]{id} // '') eq $id
    }, 3);
}

sub role_of {
    my ($ws, $doc) = @_;
    my $s = $t->subscribe($ws, $doc);
    return 'timeout' unless $s;
    return $s->{type} eq 'subscribed' ? $s->{role} : "$s->{type}:" . ($s->{code} // '');
}

###########################################################################
# roles from the ACL document

set_acl('acl-1', { version => 1, default => 'none',
    users => { alice => 'owner', vic => 'viewer', carl => 'commenter', ed => 'editor' },
    groups => { team => 'viewer', writers => 'editor' } });

my $alice = sess('alice');
is(role_of($alice, 'acl-1'), 'owner', 'ACL users: owner');
my $vic = sess('vic');
is(role_of($vic, 'acl-1'), 'viewer', 'ACL users: viewer');
my $carl = sess('carl', instance => 'b');
is(role_of($carl, 'acl-1'), 'commenter', 'ACL users: commenter (instance b)');
my $ed = sess('ed');
is(role_of($ed, 'acl-1'), 'editor', 'ACL users: editor');

# viewer: delta refused, not stored, not relayed
my $n = delta($vic, 'acl-1', 'v1', { evil => 1 });
is($n && $n->{type}, 'nack', 'viewer delta: nack');
is($n && $n->{code}, 'forbidden', '... forbidden');
is($n && $n->{doc}, 'acl-1', '... with the doc');
is($t->log_len('acl-1'), 0, '... nothing in the log (XLEN 0)');
$vic->send_json({ type => 'state', doc => 'acl-1', seq => 0, data => { evil => 1 } });
my $e = $vic->wait_for('error', 3);
is($e && $e->{code}, 'forbidden', 'viewer state: error forbidden');
is($t->redis('HGET', 'collab:{acl-1}:state', 'data'), undef, '... no snapshot stored');

# editor: stored and relayed to everybody
my $a = delta($ed, 'acl-1', 'e1', { ok => 1 });
is($a && $a->{type}, 'ack', 'editor delta: ack');
my $got = $alice->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'e1' }, 3);
ok($got, 'the editor delta reaches the owner');
ok($vic->wait_for(sub { $_[0]{type} eq 'delta' && $_[0]{id} eq 'e1' }, 3),
    '... and the viewer');
my @seen = grep { $_->{type} eq 'delta' } $alice->collect(0.3);
ok(!grep({ $_->{id} eq 'v1' } @seen), 'the viewer delta was never relayed');
is($t->log_len('acl-1'), 1, 'one delta in the log');

# intents need commenter, presence viewer
$vic->send_json({ type => 'intent', doc => 'acl-1', data => { typing => 1 } });
$e = $vic->wait_for('error', 3);
is($e && $e->{code}, 'forbidden', 'viewer intent: error forbidden');
ok(!$alice->wait_for(sub { $_[0]{type} eq 'intent' && $_[0]{user} eq 'vic' }, 0.5),
    '... not relayed');
$vic->send_json({ type => 'presence', doc => 'acl-1', data => { cursor => 3 } });
my $p = $alice->wait_for(sub { $_[0]{type} eq 'presence' && $_[0]{user} eq 'vic' }, 3);
ok($p, 'viewer presence is relayed');
$carl->send_json({ type => 'intent', doc => 'acl-1', data => { typing => 1 } });
$p = $alice->wait_for(sub { $_[0]{type} eq 'intent' && $_[0]{user} eq 'carl' }, 3);
ok($p, 'commenter intent is relayed (across instances)');
$n = delta($carl, 'acl-1', 'c1');
is($n && $n->{code}, 'forbidden', 'commenter delta: nack forbidden');

# a delta without a subscription: the store function decides
my $vic2 = sess('vic');
$n = delta($vic2, 'acl-1', 'v2');
is($n && $n->{code}, 'forbidden', 'viewer delta without a subscription: nack forbidden');
$vic2->send_json({ type => 'state', doc => 'acl-1', seq => 0, data => 1 });
$e = $vic2->wait_for('error', 3);
is($e && $e->{code}, 'forbidden', 'viewer state without a subscription: error forbidden');
is($t->log_len('acl-1'), 1, 'still one delta in the log');

# POST follows the same rules
my $r = $t->post('/collab', [{ type => 'delta', doc => 'acl-1', id => 'pv', data => 1 }],
    headers => ['Authorization: Bearer ' . token('vic')]);
is($r->{json} && $r->{json}[0]{code}, 'forbidden', 'viewer delta over POST: forbidden');
$r = $t->post('/collab', [{ type => 'delta', doc => 'acl-1', id => 'pe', data => 1 }],
    headers => ['Authorization: Bearer ' . token('ed')]);
is($r->{json} && $r->{json}[0]{type}, 'ack', 'editor delta over POST: ack');

# role none: the same answer whether the document exists, nothing created
# (after the 1 s window of the per-document audit limit, so that this denial
# gets its own audit entry)
$t->idle(1.1);
my $nobody = sess('nobody');
$nobody->send_json({ type => 'subscribe', doc => 'acl-1' });
my $e1 = $nobody->wait_for('error', 3);
$nobody->send_json({ type => 'subscribe', doc => 'ghost-doc' });
my $e2 = $nobody->wait_for('error', 3);
is($e1 && $e1->{code}, 'forbidden', 'no role on an existing document: error forbidden');
is($e2 && $e2->{code}, 'forbidden', 'no role on a document that does not exist: error forbidden');
is($e1 && $e1->{doc}, 'acl-1', '... names the doc');
{
    my %x = %{ $e1 || {} };
    my %y = %{ $e2 || {} };
    delete $x{doc};
    delete $y{doc};
    is_deeply(\%x, \%y, 'the two answers are identical but for the doc');
}
ok(!$nobody->wait_for(sub { $_[0]{type} =~ /^(subscribed|delta)$/ }, 0.3),
    'no subscribed and no delta for a user without a role');
is($t->redis('EXISTS', 'collab:{ghost-doc}:state'), 0, 'EXISTS collab:{ghost-doc}:state = 0');
is($t->redis('EXISTS', 'collab:{ghost-doc}:log'), 0, 'EXISTS collab:{ghost-doc}:log = 0');
$n = delta($nobody, 'ghost-doc', 'g1');
is($n && $n->{code}, 'forbidden', 'delta to a document without a role: forbidden');
my $n2 = delta($nobody, 'acl-1', 'g2');
is($n2 && $n2->{code}, 'forbidden', '... the same on an existing one');
is($n && $n->{message}, $n2 && $n2->{message}, '... with the same message');
is($t->redis('EXISTS', 'collab:{ghost-doc}:state'), 0, 'still no state for ghost-doc');
is($t->redis('EXISTS', 'collab:{ghost-doc}:ops'), 0, 'no ops for ghost-doc');

###########################################################################
# groups

is(role_of(sess('gwen', claims => { groups => ['team'] }), 'acl-1'), 'viewer',
    'group team: viewer');
is(role_of(sess('gus', claims => { groups => ['team', 'writers'] }), 'acl-1'), 'editor',
    'groups team + writers: the highest, editor');
is(role_of(sess('gil', claims => { groups => ['other'] }), 'acl-1'), 'error:forbidden',
    'a group not in the ACL: forbidden');
is(role_of(sess('vic', claims => { groups => ['writers'] }), 'acl-1'), 'editor',
    'user entry viewer + group editor: editor');
set_acl('acl-comma', { version => 1, default => 'none', groups => { a => 'editor', 'a,b' => 'owner' } });
is(role_of(sess('gabe', claims => { groups => ['a,b'] }), 'acl-comma'), 'error:forbidden',
    'a group name with a comma matches neither its parts nor itself');
is(role_of(sess('gabe', claims => { groups => 'writers' }), 'acl-1'), 'error:forbidden',
    'groups that is not an array grants nothing');
{
    my $g = sess('greta', claims => { groups => ['writers'] });
    is(role_of($g, 'acl-1'), 'editor', 'group editor');
    my $a2 = delta($g, 'acl-1', 'gr1');
    is($a2 && $a2->{type}, 'ack', '... may edit');
}

###########################################################################
# grants in the token ("collab" claim)

{
    my %c = (collab => { 'proj-*' => 'editor', 'exact' => 'viewer', 'ro-*' => 'viewer' });
    my $g = sess('gina', claims => \%c);
    is(role_of($g, 'proj-1'), 'editor', 'grant proj-*: editor on proj-1 (no ACL)');
    is(role_of($g, 'proj-'), 'editor', 'grant proj-*: editor on "proj-"');
    is(role_of($g, 'exact'), 'viewer', 'exact grant: viewer');
    is(role_of($g, 'exact-2'), 'error:forbidden', 'an exact grant is not a prefix');
    is(role_of($g, 'xproj-1'), 'error:forbidden', 'a prefix grant matches at the start only');
    my $a2 = delta($g, 'proj-1', 'gi1');
    is($a2 && $a2->{type}, 'ack', 'edit through a grant');
    $a2 = delta($g, 'ro-1', 'gi2');
    is($a2 && $a2->{code}, 'forbidden', 'viewer grant: no edit');

    # grant and ACL: the highest wins either way
    set_acl('mix-1', { version => 1, default => 'none', users => { gina => 'viewer', hank => 'owner' } });
    is(role_of(sess('gina', claims => { collab => { 'mix-*' => 'editor' } }), 'mix-1'), 'editor',
        'grant editor over ACL viewer: editor');
    is(role_of(sess('hank', claims => { collab => { 'mix-*' => 'viewer' } }), 'mix-1'), 'owner',
        'grant viewer under ACL owner: owner');
    is(role_of(sess('ivy', claims => { collab => { '*' => 'commenter' } }), 'mix-1'), 'commenter',
        'grant "*": commenter everywhere');
    is(role_of(sess('jay', claims => { collab => { 'mix-1' => 'superuser' } }), 'mix-1'),
        'error:forbidden', 'an unknown role name grants nothing');
    is(role_of(sess('kim', claims => { collab => ['mix-1'] }), 'mix-1'), 'error:forbidden',
        'a "collab" claim that is not an object grants nothing');

    # a fresh token re-evaluates the grants of a live session
    my $ws = sess('lou', claims => { collab => { 'regrant' => 'viewer' } });
    is(role_of($ws, 'regrant'), 'viewer', 'grant viewer');
    $ws->send_json({ type => 'auth', token => token('lou', collab => { 'regrant' => 'editor' }) });
    my $rm = $ws->wait_for('role', 3);
    is($rm && $rm->{role}, 'editor', 'a new token with a higher grant: role editor');
    $a2 = delta($ws, 'regrant', 'lou1');
    is($a2 && $a2->{type}, 'ack', '... and the edit is accepted');
    $ws->send_json({ type => 'auth', token => token('lou') });
    $rm = $ws->wait_for(sub { $_[0]{type} =~ /^(role|unsubscribed)$/ }, 3);
    is($rm && $rm->{type}, 'unsubscribed', 'a new token without the grant: unsubscribed');
    is($rm && $rm->{reason}, 'forbidden', '... reason forbidden');
}

###########################################################################
# collab_default_role and identities from a variable

{
    my $d = sess('dora', path => '/collab-def');
    is(role_of($d, 'no-acl-doc'), 'viewer', 'collab_default_role viewer without an ACL');
    is(role_of($d, 'acl-1'), 'error:forbidden', 'an ACL replaces the default role');
    is(role_of(sess('dora'), 'no-acl-doc-2'), 'error:forbidden',
        'collab_default_role none: no ACL means no access');
    # the documented default with collab_auth jwt is none (the location does
    # not set collab_default_role, the server block sets nothing either)
    is(role_of(sess('dora', path => '/collab-nodef'), 'no-acl-doc-3'), 'error:forbidden',
        'collab_auth jwt without collab_default_role: no ACL means no access');

    my $off = $t->ws_session(path => '/collab-off');
    is($off->{welcome}{user}, 'anonymous', 'auth off: anonymous');
    is(role_of($off, 'off-doc'), 'editor', 'auth off: editor without an ACL');
    is(role_of($off, 'acl-1'), 'error:forbidden', 'auth off: an ACL applies (anonymous has none)');

    set_acl('var-doc', { version => 1, default => 'none', users => { vera => 'editor', vlad => 'viewer' } });
    my $v = $t->ws_session(path => '/collab-var', headers => ['X-User: vera']);
    is($v->{welcome}{user}, 'vera', 'collab_user $http_x_user: welcome names the user');
    is(role_of($v, 'var-doc'), 'editor', '... ACL role editor');
    my $a2 = delta($v, 'var-doc', 'va1');
    is($a2 && $a2->{type}, 'ack', '... may edit');
    my @ent = $t->log_entries('var-doc');
    is($ent[-1] && $ent[-1]{user}, 'vera', '... stored under that user');
    my $vl = $t->ws_session(path => '/collab-var', headers => ['X-User: vlad']);
    is(role_of($vl, 'var-doc'), 'viewer', 'another user from the variable: viewer');
    is(role_of($vl, 'no-acl-var'), 'error:forbidden', 'collab_auth variable: default none');
    my $none = $t->ws(path => '/collab-var');
    is($none->status, 401, 'collab_auth variable without the header: 401');
    $none->drop;
    $vl->send_json({ type => 'auth', token => token('vera') });
    $e = $vl->wait_for('error', 3);
    is($e && $e->{code}, 'invalid', 'an auth message is not taken with collab_auth variable');

    my $va = $t->ws_session(path => '/collab-var-arg?user=walt');
    is($va->{welcome}{user}, 'walt', 'collab_user $arg_user');
    is(role_of($va, 'arg-doc'), 'commenter', 'collab_default_role commenter');
    $n = delta($va, 'arg-doc', 'w1');
    is($n && $n->{code}, 'forbidden', 'commenter: no edit');
    is($t->redis('EXISTS', 'collab:{arg-doc}:log'), 0, 'nothing stored');
}

###########################################################################
# live revocation across two instances, measured

my $LIVE = 'live-doc';
set_acl($LIVE, { version => 1, default => 'none', users => { eve => 'editor', olga => 'owner' } });

my $eve = sess('eve', instance => 'b');                  # the editor, on instance b
is(role_of($eve, $LIVE), 'editor', 'eve is editor on b');
my $eve_a = sess('eve');                                 # a second session, on the main instance
is(role_of($eve_a, $LIVE), 'editor', 'eve is editor on main too');
my $olga = sess('olga');                                 # the observer, on the main instance
is(role_of($olga, $LIVE), 'owner', 'olga observes as owner');
my $eve_sse = $t->sse(path => "/collab?doc=$LIVE",
    headers => ['Authorization: Bearer ' . token('eve')]);
ok($eve_sse->wait_event('subscribed', 3), 'eve has an event stream on main');

# the app announces the ACL it wrote before (audit: '' -> 1)
announce($LIVE);
Collab::Test::wait_until(sub { scalar audit($LIVE, 'acl') }, 5);

my (%reply, @sent, $nsent);
my $live_n = 0;

# sends a delta every 10 ms from eve (on b) and reads everything that comes
# back, until $until->() is true or $secs passed
sub stream_eve {
    my ($secs, $until, $on_send) = @_;
    my $deadline = time + $secs;
    my $next = 0;
    while (time < $deadline) {
        if (time >= $next) {
            my $id = 'eve-' . ++$live_n;
            $eve->send_json({ type => 'delta', doc => $LIVE, id => $id, data => { n => $live_n } });
            push @sent, [$id, time];
            $on_send->($id) if $on_send;
            $next = time + 0.01;
        }
        while (my $m = $eve->recv_json(0.002)) {
            if ($m->{type} eq 'ack' || $m->{type} eq 'nack') {
                $reply{ $m->{id} } = $m;
            } elsif ($m->{type} ne 'delta') {
                return $m if $until->($m);
            }
        }
    }
    return undef;
}

# phase 1: editor -> viewer while eve streams deltas
my ($t_pub, $redis_ms_after_set);
my $warm = stream_eve(0.3, sub { 0 });           # some accepted edits first
my $role = stream_eve(5, sub { $_[0]{type} eq 'role' }, sub {
    return if $t_pub;
    set_acl($LIVE, { version => 2, default => 'none', updated_by => 'admin-app',
        users => { eve => 'viewer', olga => 'owner' } });
    my $tm = $t->redis('TIME');
    $redis_ms_after_set = $tm->[0] * 1000 + int($tm->[1] / 1000);
    $t_pub = time;
    announce($LIVE);
});
my $t_role = time;
ok($role, 'eve got a role message while streaming');
is($role && $role->{role}, 'viewer', '... role viewer');
is($role && $role->{doc}, $LIVE, '... for the doc');
my $dt1 = ($t_role - $t_pub) * 1000;
diag(sprintf('ACL downgrade: PUBLISH on the shared Redis -> "role" on instance b: %.1f ms', $dt1));
ok($dt1 < 200, sprintf('downgrade propagated in under 200 ms (%.1f ms)', $dt1));

# eve keeps sending: every delta sent after the role message is refused
my $role_seen_at = $live_n;
stream_eve(0.4, sub { 0 });
my $rm_a = $eve_a->wait_for('role', 2);
is($rm_a && $rm_a->{role}, 'viewer', 'eve\'s session on the other instance got the role too');
my $wait_end = time + 3;
while (time < $wait_end && grep { !$reply{ $_->[0] } } @sent) {
    my $m = $eve->recv_json(0.05) or next;
    $reply{ $m->{id} } = $m if $m->{type} eq 'ack' || $m->{type} eq 'nack';
}
my @after = map { $_->[0] } grep { ($_->[0] =~ /(\d+)$/)[0] > $role_seen_at } @sent;
ok(@after >= 20, scalar(@after) . ' deltas sent after the role message');
my @bad = grep { !$reply{$_} || $reply{$_}{type} ne 'nack' || $reply{$_}{code} ne 'forbidden' } @after;
ok(!@bad, 'every one of them: nack forbidden') or diag explain [map { $reply{$_} } @bad[0 .. 2]];
my @acked = grep { $reply{$_} && $reply{$_}{type} eq 'ack' } map { $_->[0] } @sent;
ok(@acked >= 5, scalar(@acked) . ' deltas were accepted before the downgrade');
my %stored = map { $_->{id} => $_ } grep { $_->{user} eq 'eve' } $t->log_entries($LIVE);
ok(!grep({ $stored{$_} } @after), 'no delta sent after the role message is stored');
my @late = grep { $_->{ts} > $redis_ms_after_set } values %stored;
ok(!@late, 'no delta of eve stored after the ACL was written (Redis TIME)')
    or diag explain \@late;
is_deeply([sort keys %stored], [sort @acked], 'stored = acked, exactly');
my @olga_saw = grep { $_->{type} eq 'delta' && $_->{user} eq 'eve' } $olga->collect(0.5);
ok(!grep({ my $id = $_->{id}; grep { $_ eq $id } @after } @olga_saw),
    'the observer saw none of the refused deltas');
is(scalar(@olga_saw), scalar(@acked), 'the observer saw every accepted one');

# phase 2: removed from the ACL
$t_pub = undef;
my $unsub = stream_eve(5, sub { $_[0]{type} eq 'unsubscribed' }, sub {
    return if $t_pub;
    set_acl($LIVE, { version => 3, default => 'none', users => { olga => 'owner' } });
    $t_pub = time;
    announce($LIVE);
});
my $t_unsub = time;
ok($unsub, 'eve got unsubscribed');
is($unsub && $unsub->{reason}, 'forbidden', '... reason forbidden');
is($unsub && $unsub->{doc}, $LIVE, '... for the doc');
my $dt2 = ($t_unsub - $t_pub) * 1000;
diag(sprintf('ACL removal: PUBLISH -> "unsubscribed" on instance b: %.1f ms', $dt2));
ok($dt2 < 200, sprintf('removal propagated in under 200 ms (%.1f ms)', $dt2));
my $u_a = $eve_a->wait_for('unsubscribed', 2);
is($u_a && $u_a->{reason}, 'forbidden', 'the session on the other instance: unsubscribed too');
my $ev = $eve_sse->wait_event('unsubscribed', 2);
is($ev && $ev->{json}{reason}, 'forbidden', 'the event stream gets unsubscribed ...');
ok($eve_sse->wait_end(3), '... and ends');
is(role_of($eve, $LIVE), 'error:forbidden', 'eve cannot subscribe again');
ok($eve->is_open, 'her WebSocket stays open');
%stored = map { $_->{id} => 1 } grep { $_->{user} eq 'eve' } $t->log_entries($LIVE);
is_deeply([sort keys %stored], [sort @acked], 'still only the deltas accepted in phase 0');
my $a3 = delta($olga, $LIVE, 'olga-1');
is($a3 && $a3->{type}, 'ack', 'the owner edits on');

# and back: a viewer that becomes editor again
set_acl($LIVE, { version => 4, default => 'none', users => { olga => 'owner', eve => 'viewer' } });
announce($LIVE);
is(role_of($eve, $LIVE), 'viewer', 'eve re-added as viewer can subscribe');
# the subscribe reads the ACL itself: wait until a worker loaded version 4
# (its audit entry), or version 5 could be the next one loaded
{
    my $deadline = time + 10;
    Collab::HTTP::idle(0.05)
        until grep({ ($_->{new} // '') eq '4' } audit($LIVE, 'acl')) || time > $deadline;
}
set_acl($LIVE, { version => 5, default => 'none', users => { olga => 'owner', eve => 'editor' } });
my $t5 = time;
announce($LIVE);
my $up = $eve->wait_for('role', 2);
is($up && $up->{role}, 'editor', 'upgrade: role editor');
diag(sprintf('ACL upgrade: PUBLISH -> "role" on instance b: %.1f ms', (time - $t5) * 1000));
$a3 = delta($eve, $LIVE, 'eve-back');
is($a3 && $a3->{type}, 'ack', '... and her edits are accepted again');

###########################################################################
# audit

{
    my @acl = audit($LIVE, 'acl');
    is_deeply([map { "$_->{old}->$_->{new}" } @acl], ['->1', '1->2', '2->3', '3->4', '4->5'],
        'one acl entry per version, with old and new, whatever the number of workers');
    is($acl[1] && $acl[1]{by}, 'admin-app', 'by = updated_by of the ACL');
    is($acl[2] && $acl[2]{by}, 'application', 'by = "application" without updated_by');
    ok(!grep({ ($_->{ts} // '') !~ /^\d{13}$/ } @acl), 'ts in milliseconds');
    announce($LIVE);
    $t->idle(0.3);
    is(scalar(audit($LIVE, 'acl')), 5, 'announcing an unchanged ACL adds no entry');

    # an ACL written and announced while no session has the document open
    # reaches no worker: nobody records it
    set_acl('quiet-doc', { version => 7, default => 'none', users => { olga => 'owner' } });
    announce('quiet-doc');
    $t->idle(0.3);
    TODO: {
        local $TODO = 'only workers subscribed to the document hear the announcement';
        is(scalar(audit('quiet-doc', 'acl')), 1,
            'an ACL change on a document without live sessions is audited');
    }

    # the way for an application that wants the audit entry in any case:
    # FCALL collab_acl_put (docs/security.md), which also announces the change
    my $ann = sess('ann');
    my $put = $t->redis('FCALL', 'collab_acl_put', 4,
        (map { "collab:{quiet-doc}$_" } ':acl', ':audit', ':state', ''),
        1, 'billing', '', 0, 7, 0, '{"default":"none","users":{"olga":"owner","ann":"viewer"}}');
    is($put && $put->[0], 1, 'FCALL collab_acl_put by an application');
    is($put && $put->[1], 8, '... version 7 -> 8');
    my ($last) = reverse audit('quiet-doc', 'acl');
    is($last && "$last->{by}:$last->{old}->$last->{new}", 'billing:7->8', '... audited');
    is(role_of($ann, 'quiet-doc'), 'viewer', '... and in force');
    $put = $t->redis('FCALL', 'collab_acl_put', 4,
        (map { "collab:{quiet-doc}$_" } ':acl', ':audit', ':state', ''),
        1, 'billing', '', 0, 7, 0, '{"default":"none"}');
    is($put && $put->[0], -1, 'a stale version is refused');
    $put = $t->redis('FCALL', 'collab_acl_put', 4,
        (map { "collab:{quiet-doc}$_" } ':acl', ':audit', ':state', ''),
        1, 'billing', '', 0, 8, 0, '{"default":"none","users":{"olga":"owner"}}');
    my $um = $ann->wait_for('unsubscribed', 2);
    is($um && $um->{reason}, 'forbidden', 'its announcement reaches live sessions');

    my @den = audit('acl-1', 'denied');
    my %act = map { ("$_->{user}:$_->{action}" => 1) } @den;
    ok($act{'vic:delta'}, 'denied entry: vic delta');
    ok($act{'nobody:subscribe'}, 'denied entry: nobody subscribe');
    ok(!grep({ ($_->{ts} // '') !~ /^\d{13}$/ } @den), 'denied entries have a ts');
    ok(!grep({ !defined $_->{user} || !defined $_->{action} } @den), '... a user and an action');
    my @eve_den = audit($LIVE, 'denied');
    ok(scalar(@eve_den) >= 1, 'eve\'s refused deltas were audited');
    ok(scalar(@eve_den) <= 6,
        scalar(@eve_den) . ' denied entries for ~60 refused deltas over ~1.5 s (rate-limited)');
}

# rate limit: 200 forbidden deltas as fast as possible, subscribed (refused at
# the edge) and not subscribed (refused by the store function)
set_acl('flood', { version => 1, default => 'none', users => { fv => 'viewer' } });
for my $case (['subscribed', 1], ['not subscribed', 0]) {
    my ($name, $subscribe) = @$case;
    my $ws = sess('fv', instance => 'b');
    is(role_of($ws, 'flood'), 'viewer', "flood ($name): viewer") if $subscribe;
    my $before = scalar audit('flood', 'denied');
    my $t0 = time;
    $ws->send_json({ type => 'delta', doc => 'flood', id => "f$_", data => $_ }) for 1 .. 200;
    my %codes;
    my $deadline = time + 10;
    my $count = 0;
    while ($count < 200 && time < $deadline) {
        my $m = $ws->recv_json(1) or next;
        next unless $m->{type} eq 'nack' || $m->{type} eq 'ack';
        $count++;
        $codes{ $m->{type} eq 'ack' ? 'ack' : $m->{code} }++;
    }
    my $secs = time - $t0;
    is($count, 200, "flood ($name): 200 replies");
    ok(!$codes{ack}, "flood ($name): none accepted") or diag explain \%codes;
    ok(($codes{forbidden} // 0) >= 1, "flood ($name): forbidden") or diag explain \%codes;
    my $added = scalar(audit('flood', 'denied')) - $before;
    my $max = int($secs) + 2;
    ok($added >= 1 && $added <= $max,
        sprintf("flood ($name): %d denied entries for 200 refusals in %.2fs (at most %d)",
            $added, $secs, $max));
    $t->idle(1.1);    # the per-document limit window
}
is($t->log_len('flood'), 0, 'nothing of the floods stored');

# denials spread over many document ids: each one is a new audit stream
{
    my $ws = sess('prober');
    my $keys0 = scalar @{ $t->redis('KEYS', 'collab:{probe-*') };
    my $t0 = time;
    my $errs = 0;
    for my $i (1 .. 100) {
        my $m = $t->subscribe($ws, "probe-$i");
        $errs++ if $m && $m->{type} eq 'error' && $m->{code} eq 'forbidden';
    }
    my $secs = time - $t0;
    is($errs, 100, '100 forbidden subscribes to 100 unknown documents');
    my @streams = grep { /:audit$/ } @{ $t->redis('KEYS', 'collab:{probe-*') };
    my $entries = 0;
    $entries += $t->redis('XLEN', $_) for @streams;
    ok($entries <= int($secs) * 10 + 10,
        sprintf('audit entries for forbidden subscribes stay rate-limited across documents '
            . '(%d entries in %d new streams in %.2fs)', $entries, scalar(@streams), $secs));
    is($t->redis('EXISTS', 'collab:{probe-1}:state'), 0, '... and no state is created');
}

$t->done;
done_testing();
