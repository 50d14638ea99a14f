#!/usr/bin/env bash
# Creates a throwaway PKI for the dev control plane in the directory $1:
# a CA, the API server's serving certificate, the service-account signing key
# and an admin client certificate. Existing files are kept.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
[ -f admin.crt ] && exit 0
umask 077

openssl genrsa -out ca.key 2048 2>/dev/null
openssl req -x509 -new -nodes -key ca.key -subj "/CN=cloudpillar-dev-ca" -days 3650 -out ca.crt 2>/dev/null

cat >apiserver.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1
EXT
openssl genrsa -out apiserver.key 2048 2>/dev/null
openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
  -extfile apiserver.ext -out apiserver.crt 2>/dev/null

openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

cat >client.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT
openssl genrsa -out admin.key 2048 2>/dev/null
openssl req -new -key admin.key -subj "/O=system:masters/CN=cloudpillar-admin" -out admin.csr 2>/dev/null
openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
  -extfile client.ext -out admin.crt 2>/dev/null
rm -f ./*.csr ./*.ext
echo "[k3s-dev] generated a throwaway PKI in $dir" >&2
