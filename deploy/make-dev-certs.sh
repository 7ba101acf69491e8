#!/usr/bin/env bash
# make-dev-certs.sh: a development CA and the certificates genarm's mutual TLS needs, made with
# the openssl CLI, plus the `kubectl create secret` lines that load them into a cluster.
#
#   deploy/make-dev-certs.sh [-o DIR] [-n NAMESPACE] [-d DAYS] [WORKLOAD...]
#
#   -o DIR        where to write the files (default: ./genarm-dev-certs); existing files are kept
#                 unless -f is given
#   -n NAMESPACE  the Kubernetes namespace the workers' DNS names are in (default: genarm)
#   -d DAYS       validity (default: 365)
#   -f            overwrite existing files (a new CA: every certificate is reissued)
#   WORKLOAD      worker Services/StatefulSets/Deployments to issue server certificates for
#                 (default: genarm-base-worker genarm-rm-helpful)
#
# Writes ca.crt/ca.key (EC P-256 CA), router.crt/router.key (client certificate, EKU
# clientAuth) and, per WORKLOAD, WORKLOAD.crt/WORKLOAD.key (server certificate, EKU serverAuth)
# whose subjectAltNames are:
#   WORKLOAD, WORKLOAD.NS, WORKLOAD.NS.svc, WORKLOAD.NS.svc.cluster.local,
#   *.WORKLOAD.NS.svc, *.WORKLOAD.NS.svc.cluster.local (StatefulSet pods),
#   genarm-worker (the name the router checks, GENARM_TLS_SERVER_NAME, since workers register
#   their pod IP in etcd), localhost and 127.0.0.1.
# The CA key stays in DIR: keep it out of the cluster and out of git. These are development
# certificates; in production use your PKI (e.g. cert-manager) with the same names and EKUs.
set -euo pipefail

out=./genarm-dev-certs
ns=genarm
days=365
force=0
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
while getopts "o:n:d:fh" opt; do
    case "$opt" in
        o) out=$OPTARG ;;
        n) ns=$OPTARG ;;
        d) days=$OPTARG ;;
        f) force=1 ;;
        h) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
workloads=("$@")
if [ ${#workloads[@]} -eq 0 ]; then
    workloads=(genarm-base-worker genarm-rm-helpful)
fi
command -v openssl >/dev/null || { echo "make-dev-certs.sh: openssl is not installed (apt-get install openssl)" >&2; exit 1; }
case "$days" in ''|*[!0-9]*) echo "make-dev-certs.sh: -d takes a number of days, got '$days'" >&2; exit 2 ;; esac
for w in "${workloads[@]}"; do
    case "$w" in
        *[!a-z0-9-]*|-*|'') echo "make-dev-certs.sh: '$w' is not a Kubernetes object name (lowercase letters, digits, -)" >&2; exit 2 ;;
    esac
done

mkdir -p "$out"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ -f "$out/ca.crt" ] && [ "$force" -eq 0 ]; then
    echo "using the existing CA in $out (-f makes a new one)" >&2
else
    openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/ca.key"
    openssl pkcs8 -topk8 -nocrypt -in "$tmp/ca.key" -out "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" -subj "/CN=genarm dev CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$out/ca.crt"
    force=1 # a new CA: reissue everything below
fi

# issue NAME EKU SAN: NAME.key and NAME.crt signed by the CA.
issue() {
    local name=$1 eku=$2 san=$3
    if [ -f "$out/$name.crt" ] && [ "$force" -eq 0 ]; then
        echo "keeping $out/$name.crt (-f reissues it)" >&2
        return
    fi
    openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/$name.ec"
    openssl pkcs8 -topk8 -nocrypt -in "$tmp/$name.ec" -out "$out/$name.key"
    openssl req -new -key "$out/$name.key" -subj "/CN=$name" -out "$tmp/$name.csr"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$eku"
        echo "subjectAltName=$san"
        echo "authorityKeyIdentifier=keyid"
    } >"$tmp/$name.ext"
    openssl x509 -req -in "$tmp/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
        -days "$days" -sha256 -extfile "$tmp/$name.ext" -out "$out/$name.crt" 2>/dev/null
    openssl verify -CAfile "$out/ca.crt" "$out/$name.crt" >/dev/null
}

issue router clientAuth "DNS:genarm-router,DNS:genarm-router.$ns,DNS:genarm-router.$ns.svc"
for w in "${workloads[@]}"; do
    d="$w.$ns.svc"
    issue "$w" serverAuth \
        "DNS:$w,DNS:$w.$ns,DNS:$d,DNS:$d.cluster.local,DNS:*.$d,DNS:*.$d.cluster.local,DNS:genarm-worker,DNS:localhost,IP:127.0.0.1"
done
chmod 0644 "$out"/*.crt

echo "wrote the CA, router and ${workloads[*]} certificates to $out"
echo
echo "# Load them into namespace $ns (the manifests in deploy/kubernetes mount these Secrets):"
echo "kubectl -n $ns create secret generic genarm-router-tls --from-file=tls.crt=$out/router.crt --from-file=tls.key=$out/router.key --from-file=ca.crt=$out/ca.crt"
for w in "${workloads[@]}"; do
    echo "kubectl -n $ns create secret generic $w-tls --from-file=tls.crt=$out/$w.crt --from-file=tls.key=$out/$w.key --from-file=ca.crt=$out/ca.crt"
done
echo
echo "# Locally: genarm-base-worker ... --tls-cert $out/${workloads[0]}.crt --tls-key $out/${workloads[0]}.key --tls-ca $out/ca.crt"
echo "#          genarm-router --base https://127.0.0.1:PORT --tls-cert $out/router.crt --tls-key $out/router.key --tls-ca $out/ca.crt"
