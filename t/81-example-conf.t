#!/usr/bin/perl

# conf/example.conf is what operators copy: it must pass `nginx -t` with this
# module, every directive in it spelled and placed right.  Only the paths of
# the files it names (certificates, keys, logs) and the listen port are
# replaced, with files made here.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Collab::Test;

my $t = Collab::Test->new(timeout => 60);
my $dir = $t->dir;

open my $fh, '<', "$FindBin::Bin/../conf/example.conf" or die "example.conf: $!";
my $conf = do { local $/; <$fh> };
close $fh;

my ($crt, $key) = $t->tls_cert;
system("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out $dir/rs.key"
       . " 2>/dev/null && openssl pkey -in $dir/rs.key -pubout -out $dir/rs.pub") == 0
    or die "openssl: RSA key";
for my $f ('hs.key', 'admin.key') {
    open my $o, '>', "$dir/$f" or die "$!";
    print $o 'k' x 32;
    close $o;
}

my %subst = (
    'load_module modules/ngx_http_collab_module.so;' => 'load_module ' . Collab::Test::module_path() . ';',
    'user www-data;' => '',
    '/var/log/nginx/' => "$dir/",
    'listen 443 ssl;' => 'listen 127.0.0.1:%%PORT%% ssl;',
    '/etc/ssl/certs/collab.example.com.pem' => $crt,
    '/etc/ssl/private/collab.example.com.key' => $key,
    '/etc/collab/jwt-rs256.pub' => "$dir/rs.pub",
    '/etc/collab/jwt-hs256.key' => "$dir/hs.key",
    '/etc/collab/admin.key' => "$dir/admin.key",
);
for my $from (sort keys %subst) {
    ok(index($conf, $from) >= 0, "example.conf names $from");
    $conf =~ s/\Q$from\E/$subst{$from}/g;
}
unlike($conf, qr{/etc/(?!nginx/mime\.types)|/var/log}, 'no other system path is left');

my ($rc, $out) = $t->check_nginx_conf($conf, raw => 1);
is($rc, 0, 'nginx -t accepts conf/example.conf') or diag $out;
like($out, qr/test is successful/, '... test is successful');
unlike($out, qr/\[(warn|emerg|alert)\]/, '... without a warning') or diag $out;

$t->done;
done_testing;
