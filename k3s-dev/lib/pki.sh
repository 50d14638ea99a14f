#!/usr/bin/env bash
# Creates a throwaway PKI for the dev control plane in the directory $1: a CA, the API
# server's serving certificate, the service-account signing key, and client certificates
# for the admin and the controller manager. Files that exist are kept.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
umask 077
made=false

if [ ! -f ca.crt ]; then
  openssl genrsa -out ca.key 2048 2>/dev/null
  openssl req -x509 -new -nodes -key ca.key -subj "/CN=cloudpillar-dev-ca" -days 3650 -out ca.crt 2>/dev/null
  made=true
fi

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
sign() {
  local name=$1 subject=$2 extensions=$3
  [ -f "$name.crt" ] && return 0
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n%s\n' "$extensions" >"$name.ext"
  openssl genrsa -out "$name.key" 2048 2>/dev/null
  openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
  made=true
}

sign apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
sign admin "/O=system:masters/CN=cloudpillar-admin" "extendedKeyUsage=clientAuth"
sign controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"

if [ ! -f sa.key ]; then
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  made=true
fi
if $made; then echo "[k3s-dev] generated a throwaway PKI in $dir" >&2; fi
