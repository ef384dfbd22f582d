#!/bin/sh
# SeaweedFS as a single-node S3 store on :9000, a stand-in for MinIO (`weed mini` binds all of its
# servers to one address: keep its network private). Two identities: the admin (MINIO_ROOT_USER)
# and the service's user (S3_ACCESS_KEY), which may only use the bucket service4ct (read/write)
# and service4ct-models (read).
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${S3_ACCESS_KEY:?}" "${S3_SECRET_KEY:?}"
config=/tmp/s3.json
umask 077
cat >"$config" <<JSON
{"identities": [
  {"name": "admin", "credentials": [{"accessKey": "$MINIO_ROOT_USER", "secretKey": "$MINIO_ROOT_PASSWORD"}],
   "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
  {"name": "service4ct", "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
   "actions": ["Read:service4ct", "Write:service4ct", "List:service4ct", "Tagging:service4ct",
               "Read:service4ct-models", "List:service4ct-models"]}
]}
JSON
mkdir -p /data/weed
exec env GOMEMLIMIT="${GOMEMLIMIT:-512MiB}" weed -logtostderr=true -config_dir=/data mini \
  -dir=/data/weed -ip=127.0.0.1 -ip.bind=0.0.0.0 -s3.port=9000 \
  -s3.config="$config" -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.telemetry=false "$@"
