#!/usr/bin/env bash
# On the GPU machine: unpacks .device/pack.tar.gz (written by tools/device-pack.sh; the
# executables compress 57 MB -> 16 MB, well inside the 64 MiB a device run can carry) into
# .device/bin and .device/bench. Idempotent: does nothing once the pack is unpacked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pack=.device/pack.tar.gz
[ -f "$pack" ] || exit 0
stamp=.device/.unpacked
if [ -f "$stamp" ] && [ "$stamp" -nt "$pack" ]; then exit 0; fi
tar xzf "$pack" -C .device
touch "$stamp"
