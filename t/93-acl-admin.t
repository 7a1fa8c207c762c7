#!/usr/bin/perl

# The ACL admin endpoint (collab_admin): GET and PUT of a document's ACL by
# the admin key or by an owner (JWT), version check, validation, audit
# entries with the real author, and live propagation of a PUT to sessions on
# another nginx instance (measured).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

my $t = Collab::Test->new(timeout => 120, workers => 2);
$t->jwt_keys;
my $D = $t->testdir;
my $ADMIN = join '', map { sprintf '%02x', int rand 256 } 1 .. 24;
{
    open my $fh, '>', "$D/admin.key" or die;
    print $fh "$ADMIN\n";
    close $fh;
}
$t->start_redis;

$t->write_nginx_conf(<<'EOF');
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        error_log %%TESTDIR%%/error.log debug;
        error_log %%TESTDIR%%/info.log info;
        collab_ping 30s;

        location = /collab {
            collab;
            collab_auth jwt;
            collab_default_role none;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
        location = /collab/acl {
            collab_admin;
            collab_auth jwt;
            collab_default_role none;
            collab_admin_key file=%%TESTDIR%%/admin.key;
            collab_jwt_key hs256 file=%%TESTDIR%%/keys/hs256.key;
        }
        location = /acl-keyonly {
            collab_admin;
            collab_admin_key file=%%TESTDIR%%/admin.key;
        }
        location = /acl-nothing {
            collab_admin;
        }
    }
EOF
$t->start_nginx;
$t->start_nginx(name => 'b');

sub token {
    my ($user, %c) = @_;
    return $t->jwt(claims => { sub => $user, exp => time + 600, %c });
}

sub admin_req {
    my ($method, $doc, %o) = @_;
    my @h;
    push @h, "Authorization: Bearer $o{bearer}" if defined $o{bearer};
    push @h, 'Content-Type: application/json' if defined $o{body};
    my $path = ($o{path} // '/collab/acl') . (defined $doc ? "?doc=$doc" : '');
    my $body = $o{body};
    $body = Collab::Test::json_encode($body) if ref $body;
    my $r = $t->http(method => $method, path => $path, headers => \@h,
        defined $body ? (body => $body) : (), instance => $o{instance});
    $r->{json} //= eval { Collab::Test::json_decode($r->{body}) } if defined $r->{body};
    return $r;
}

sub audit {
    my ($doc, $event) = @_;
    my @out;
    for my $e (@{ $t->redis('XRANGE', "collab:{$doc}:audit", '-', '+') }) {
        my %h = @{ $e->[1] };
        push @out, \%h if !$event || $h{event} eq $event;
    }
    return @out;
}

sub stored_acl {
    my $raw = $t->redis('GET', "collab:{$_[0]}:acl");
    return defined $raw ? Collab::Test::json_decode($raw) : undef;
}

# --- the admin key

my $r = admin_req('GET', 'adm-1');
is($r->{status}, 401, 'GET without credentials: 401');
$r = admin_req('GET', 'adm-1', bearer => $ADMIN);
is($r->{status}, 404, 'GET of a document without an ACL: 404');
like($r->{headers}{'content-type'} // '', qr{application/json}, '... JSON');

$r = admin_req('PUT', 'adm-1', bearer => $ADMIN,
    body => { default => 'none', users => { alice => 'owner', carl => 'editor' } });
is($r->{status}, 200, 'PUT with the admin key: 200') or diag $r->{body};
is($r->{json} && $r->{json}{version}, 1, '... version 1');
is($r->{json} && $r->{json}{updated_by}, 'admin', '... updated_by admin');
is(stored_acl('adm-1')->{users}{alice}, 'owner', '... stored in collab:{adm-1}:acl');

$r = admin_req('GET', 'adm-1', bearer => $ADMIN);
is($r->{status}, 200, 'GET with the admin key');
is($r->{json} && $r->{json}{version}, 1, '... the ACL');

$r = admin_req('GET', 'adm-1', bearer => 'x' . substr($ADMIN, 1));
is($r->{status}, 401, 'a wrong admin key: 401');

# --- owners by JWT

my $alice = token('alice');
$r = admin_req('GET', 'adm-1', bearer => $alice);
is($r->{status}, 200, 'GET by an owner');
$r = admin_req('PUT', 'adm-1', bearer => $alice, body => { version => 1, default => 'viewer',
    updated_by => 'mallory', users => { alice => 'owner', carl => 'editor' } });
is($r->{status}, 200, 'PUT by an owner with the current version') or diag $r->{body};
is($r->{json} && $r->{json}{version}, 2, '... version 2');
is($r->{json} && $r->{json}{updated_by}, 'alice', '... updated_by is the real author, not the body\'s');
$r = admin_req('PUT', 'adm-1', bearer => $alice, body => { version => 1, default => 'none',
    users => { alice => 'owner' } });
is($r->{status}, 409, 'PUT with a stale version: 409');
is(stored_acl('adm-1')->{version}, 2, '... nothing changed');

for my $u (['bob', 'no role'], ['carl', 'editor']) {
    $r = admin_req('GET', 'adm-1', bearer => token($u->[0]));
    is($r->{status}, 403, "GET by $u->[1]: 403");
    $r = admin_req('PUT', 'adm-1', bearer => token($u->[0]),
        body => { default => 'owner', users => { $u->[0] => 'owner' } });
    is($r->{status}, 403, "PUT by $u->[1]: 403");
}
is(stored_acl('adm-1')->{version}, 2, 'the refused PUTs changed nothing');

$r = admin_req('PUT', 'adm-new', bearer => token('dave', collab => { 'adm-*' => 'owner' }),
    body => { default => 'none', users => { dave => 'owner' } });
is($r->{status}, 200, 'an owner by token grant may create the ACL');
$r = admin_req('PUT', 'adm-new2', bearer => token('erin'),
    body => { default => 'owner' });
is($r->{status}, 403, 'nobody else can create an ACL for a document without one');
is($t->redis('EXISTS', 'collab:{adm-new2}:acl'), 0, '... none created');

$r = admin_req('GET', 'adm-1', bearer => token('x', exp => time - 3600));
is($r->{status}, 401, 'an expired token: 401');
$r = admin_req('GET', 'adm-1', bearer => $t->jwt(key => 'hs256b', claims => { sub => 'alice' }));
is($r->{status}, 401, 'a forged token naming an owner: 401');

# --- validation and requests

my %bad = (
    'not JSON' => '{"default":',
    'an array' => '[]',
    'default not a role' => { default => 'god' },
    'users not an object' => { users => ['alice'] },
    'a role that does not exist' => { users => { alice => 'admin' } },
    'a group role that is not a string' => { groups => { team => 3 } },
    'version not an integer' => { version => '2' },
);
for my $name (sort keys %bad) {
    $r = admin_req('PUT', 'adm-1', bearer => $ADMIN, body => $bad{$name});
    is($r->{status}, 400, "PUT $name: 400");
    is($r->{json} && $r->{json}{error}, 'invalid', '... error invalid');
}
is(stored_acl('adm-1')->{version}, 2, 'invalid bodies changed nothing');
is(admin_req('GET', 'bad%20doc', bearer => $ADMIN)->{status}, 400, 'invalid doc id: 400');
is(admin_req('GET', undef, bearer => $ADMIN)->{status}, 400, 'no doc: 400');
is(admin_req('DELETE', 'adm-1', bearer => $ADMIN)->{status}, 405, 'DELETE: 405');
is(admin_req('POST', 'adm-1', bearer => $ADMIN, body => {})->{status}, 405, 'POST: 405');

$r = admin_req('GET', 'adm-1', bearer => $ADMIN, path => '/acl-keyonly');
is($r->{status}, 200, 'a location with the admin key only: GET with the key');
$r = admin_req('GET', 'adm-1', path => '/acl-keyonly');
is($r->{status}, 401, '... without it: 401');
$r = admin_req('PUT', 'adm-1', bearer => token('alice'), path => '/acl-keyonly',
    body => { default => 'owner' });
ok($r->{status} == 401 || $r->{status} == 403, '... a token does not count there: ' . $r->{status});
$r = admin_req('PUT', 'adm-1', bearer => $ADMIN, path => '/acl-nothing', body => { default => 'owner' });
is($r->{status}, 403, 'a location without key and without jwt refuses PUT');
$r = admin_req('GET', 'adm-1', bearer => $ADMIN, path => '/acl-nothing');
is($r->{status}, 401, '... and GET');
is(stored_acl('adm-1')->{version}, 2, 'still version 2');

# --- audit

{
    my @acl = audit('adm-1', 'acl');
    is_deeply([map { "$_->{by}:$_->{old}->$_->{new}" } @acl], ['admin:0->1', 'alice:1->2'],
        'one audit entry per PUT, with the author and the versions');
    ok(!grep({ ($_->{ts} // '') !~ /^\d{13}$/ } @acl), '... and a ts');
    my @den = audit('adm-1', 'denied');
    ok(grep({ $_->{user} eq 'bob' && $_->{action} eq 'acl' } @den), 'the refused admin access is audited');
}

# --- a PUT reaches live sessions on another instance

{
    admin_req('PUT', 'adm-live', bearer => $ADMIN,
        body => { default => 'none', users => { eve => 'editor', olga => 'owner' } });
    my $eve = $t->ws_session(instance => 'b', headers => ['Authorization: Bearer ' . token('eve')]);
    my $s = $t->subscribe($eve, 'adm-live');
    is($s && $s->{role}, 'editor', 'eve editor on instance b');

    my $olga = token('olga');
    my $t0 = time;
    $r = admin_req('PUT', 'adm-live', bearer => $olga,
        body => { default => 'none', users => { eve => 'viewer', olga => 'owner' } });
    my $t1 = time;
    is($r->{status}, 200, 'the owner downgrades eve');
    my $m = $eve->wait_for('role', 2);
    my $dt = (time - $t1) * 1000;
    is($m && $m->{role}, 'viewer', 'eve gets role viewer');
    diag(sprintf('admin PUT (%.1f ms) -> "role" on instance b %.1f ms after the response',
        ($t1 - $t0) * 1000, $dt));
    ok($dt < 200, 'within 200 ms');
    $eve->send_json({ type => 'delta', doc => 'adm-live', id => 'e1', data => 1 });
    my $n = $eve->wait_for(sub { ($_[0]{id} // '') eq 'e1' }, 2);
    is($n && $n->{code}, 'forbidden', 'her delta is refused');

    $r = admin_req('PUT', 'adm-live', bearer => $ADMIN, instance => 'b',
        body => { default => 'none', users => { olga => 'owner' } });
    $t1 = time;
    $m = $eve->wait_for('unsubscribed', 2);
    $dt = (time - $t1) * 1000;
    is($m && $m->{reason}, 'forbidden', 'removed: unsubscribed forbidden');
    ok($dt < 200, sprintf('within 200 ms (%.1f ms)', $dt));
    $t->idle(0.3);
    my @acl = audit('adm-live', 'acl');
    is_deeply([map { "$_->{old}->$_->{new}" } @acl], ['0->1', '1->2', '2->3'],
        'no duplicate audit entries from the workers that reloaded the ACL');
    is($t->log_len('adm-live'), 0, 'nothing stored');
}

# --- the admin key is never logged

ok($t->quit_nginx(timeout => 10), 'nginx quit');
$t->quit_nginx(name => 'b', timeout => 10);
my $info = Collab::Test::_slurp("$D/info.log");
ok(index($info, $ADMIN) < 0, 'the admin key is not in the info log');
my @mod = grep { /\] \d+#\d+: (?:\*\d+ )?collab: / && index($_, $ADMIN) >= 0 }
    split /\n/, $t->error_log;
ok(!@mod, 'no module log line carries the admin key') or diag $mod[0];

$t->done;
done_testing();
