#!/bin/sh
# Create the compose stack's secrets once (never overwritten, never printed, never committed):
#   deploy/.env                            PREFECT_AUTH_STRING (Prefect API basic auth, robustdx:<prefect-password>),
#                                          ROBUSTDX_ADMIN_TOKEN (the service's reload endpoint),
#                                          ROBUSTDX_CLINICIAN_TOKEN (the service's feedback endpoint)
#   deploy/secrets/prefect-password        the password of PREFECT_AUTH_STRING (Prometheus scrapes with it)
#   deploy/secrets/alert-token             Alertmanager -> alert receiver bearer secret
#   deploy/secrets/grafana-admin-password  Grafana's admin password (user admin)
#   deploy/secrets/postgres-password       PostgreSQL user robustdx (the Prefect server's, MLflow's and the inference log's databases)
# docker compose -f deploy/compose.yaml up refuses to start until they exist. Read one with e.g.
#   cat deploy/secrets/grafana-admin-password
set -eu
deploy="$(cd "$(dirname "$0")" && pwd)"
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }

umask 077
mkdir -p "$deploy/secrets"
chmod 700 "$deploy/secrets"
for name in prefect-password alert-token grafana-admin-password postgres-password; do
    file="$deploy/secrets/$name"
    if [ ! -s "$file" ]; then
        secret > "$file"
        echo "created deploy/secrets/$name"
    fi
    # readable inside the containers (their users are not yours); the 0700 folder keeps other host users out
    chmod 644 "$file"
done

env_file="$deploy/.env"
touch "$env_file"
chmod 600 "$env_file"
if ! grep -q '^PREFECT_AUTH_STRING=' "$env_file"; then
    echo "PREFECT_AUTH_STRING=robustdx:$(cat "$deploy/secrets/prefect-password")" >> "$env_file"
    echo "created PREFECT_AUTH_STRING in deploy/.env"
fi
if ! grep -q '^ROBUSTDX_ADMIN_TOKEN=' "$env_file"; then
    echo "ROBUSTDX_ADMIN_TOKEN=$(secret)" >> "$env_file"
    echo "created ROBUSTDX_ADMIN_TOKEN in deploy/.env"
fi
if ! grep -q '^ROBUSTDX_CLINICIAN_TOKEN=' "$env_file"; then
    echo "ROBUSTDX_CLINICIAN_TOKEN=$(secret)" >> "$env_file"
    echo "created ROBUSTDX_CLINICIAN_TOKEN in deploy/.env"
fi
