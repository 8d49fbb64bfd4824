#!/bin/sh
# The container listens on 0.0.0.0, so it never serves without an API key: on the first `serve` an admin
# key is created, kept in the data volume (readable by its owner only) and named in the log. Other
# commands (a scaled-out `worker`) serve nothing and create no key.
#   read it:        docker compose -f docker/compose.yaml exec service cat /data/admin.key
#   use it:         curl -H "Authorization: Bearer $(cat admin.key)" http://localhost:8000/collections
#   more/limited:   docker compose ... exec service prompt-adapters keys create --name N --scope read
set -e
key_file="${PAS_DATA_DIR:-/data}/admin.key"
if [ "${1:-serve}" = serve ] && [ ! -s "$key_file" ]; then
    mkdir -p "$(dirname "$key_file")"
    umask 077
    prompt-adapters keys create --name docker-admin --scope admin > "$key_file.tmp"
    mv "$key_file.tmp" "$key_file"
    echo "created an admin API key in $key_file (shown by: cat $key_file inside the container)" >&2
fi
exec prompt-adapters "$@"
