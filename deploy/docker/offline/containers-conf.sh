#!/bin/sh
# Writes /etc/containers/containers.conf for podman running as root on a host without systemd and
# with hybrid cgroups (many VMs and CI runners): runc (crun refuses hybrid cgroups), cgroupfs, file
# events, and explicit ulimits (podman's defaults need CAP_SYS_RESOURCE to be raised).
# An existing file is kept unless FORCE=1.
set -eu
conf=/etc/containers/containers.conf
if [ -s "$conf" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "kept $conf"
  exit 0
fi
mkdir -p /etc/containers
cat >"$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
echo "wrote $conf"
