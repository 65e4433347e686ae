#!/usr/bin/env bash
# Debian packages: `ci/system-packages.sh serve` installs what the server needs (espeak-ng,
# the offline agent's voice); with no argument, also what the tests use as real peers:
# sox, tinyproxy (the HTTP proxy the providers' requests go through in tests), the
# headless browsers that talk to the playground: chromium, and firefox-esr with pulseaudio
# (Firefox runs Web Audio only with a sound server to play to); haproxy, the load balancer
# in front of a fleet of servers (deploy/haproxy/); and the SIP peers the SIP tests call
# and are called by: SIPp (sip-tester), baresip, kamailio, sipsak; openssl (the test
# certificates) and gcc (the benchmarks' load generator).
# Installs what is missing when run as root; otherwise says what to install.
set -euo pipefail
needed=(espeak-ng)
[ "${1:-test}" = serve ] || needed+=(sox tinyproxy chromium firefox-esr pulseaudio haproxy
                                     sip-tester baresip kamailio sipsak openssl gcc)
missing=()
for pkg in "${needed[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "system-packages: please install: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "system-packages: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
