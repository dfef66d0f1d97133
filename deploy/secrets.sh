#!/bin/bash
# deploy/secrets.sh: the secrets docker-compose.yml reads, made once with
# random values and never overwritten: deploy/secrets/{s3-access-key,
# s3-secret-key, s3-credentials (the same pair for Raksha, as an AWS
# credentials file), repo-password}, TEMPORAL_DB_PASSWORD in .env, and
# deploy/secrets/clouds.yaml and deploy/secrets/keystone-password (raksha-api's
# Keystone service user) as templates to fill in with the cloud's
# credentials. The directory is 0700 and its files 0644, so that the
# containers' unprivileged users can read them (compose bind-mounts them
# with these modes) while no other user of this host can reach them.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=deploy/secrets
mkdir -p "$dir"
chmod 700 "$dir"

rand() { head -c 48 /dev/urandom | base64 -w0 | tr -d '+/=' | cut -c1-"$1"; }

put() { # put FILE CONTENT: write FILE unless it exists
	if [ -e "$dir/$1" ]; then
		echo "kept    $dir/$1"
		return
	fi
	printf '%s' "$2" > "$dir/$1"
	chmod 644 "$dir/$1"
	echo "created $dir/$1"
}

put s3-access-key "raksha$(rand 10)"
put s3-secret-key "$(rand 40)"
put s3-credentials "[default]
aws_access_key_id = $(cat "$dir/s3-access-key")
aws_secret_access_key = $(cat "$dir/s3-secret-key")
"
put repo-password "$(rand 40)"
put clouds.yaml "# The control worker's OpenStack credentials (entry \"openstack\",
# as deploy/worker.yaml's cloud: says). Fill in and keep it here only.
clouds:
  openstack:
    auth:
      auth_url: https://keystone.example.org:5000/v3
      username: raksha
      password: CHANGE-ME
      project_name: service
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: internal
    identity_api_version: 3
"
put keystone-password "CHANGE-ME"
if ! grep -q '^TEMPORAL_DB_PASSWORD=' .env 2>/dev/null; then
	umask 077
	echo "TEMPORAL_DB_PASSWORD=$(rand 32)" >> .env
	echo "created TEMPORAL_DB_PASSWORD in .env"
else
	echo "kept    TEMPORAL_DB_PASSWORD in .env"
fi
