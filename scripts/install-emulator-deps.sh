#!/bin/sh
# qemu-user >= 10 and mmdebstrap for `make emulator` (Debian bookworm; run as root).
# bookworm's own qemu-user (7.2) segfaults importing onnxruntime 1.32; bookworm-backports has 10.x.
# The backports source reuses the Debian archive URI this system already uses.
set -eu
if command -v qemu-aarch64 >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-emulator-deps: needs root (apt-get): sudo $0" >&2; exit 2
fi
. /etc/os-release
if [ "${ID:-}" != debian ] || [ "${VERSION_CODENAME:-}" != bookworm ]; then
    echo "install-emulator-deps: on ${PRETTY_NAME:-this system}, install qemu-user >= 10 and mmdebstrap yourself" >&2; exit 2
fi
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n1)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    [ -n "$uri" ] || { echo "install-emulator-deps: no Debian archive URI in apt's sources" >&2; exit 2; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" > /etc/apt/sources.list.d/edgekit-backports.sources
fi
apt-get update -q
apt-get install -y -q -t bookworm-backports qemu-user
apt-get install -y -q mmdebstrap
