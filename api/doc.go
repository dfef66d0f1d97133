// Package api is raksha-api: the tenants' HTTP JSON API in front of
// Temporal and the repositories, in the OpenStack style (issue #16).
//
// A caller presents a Keystone token in X-Auth-Token; the API validates it
// against Keystone with its own service credentials (GET /v3/auth/tokens),
// caches a validation briefly (keyed by a hash of the token, never the
// token), and never writes a token into a log line, an error body or a
// workflow input. The token's project is the caller's project; its roles
// (reader, member, admin) are checked against a policy of rules per action
// (defaults in code, overridable by a YAML file, see Policy). Rights on
// another project than the token's are asked of Keystone
// (GET /v3/role_assignments, effective), also with the service
// credentials.
//
// Every answer that is not a success carries an OpenStack-style error body,
// the shape Keystone and Glance use:
//
//	{"error": {"code": 403, "title": "Forbidden", "message": "..."}}
//
// Beside backups, runs, restores and clones, the API lists a project's
// workloads by the control worker's discovery (WorkloadSource), deletes
// and protects backups through the repository, enforces the admin's
// Quotas at backup start, lists and streams files out of a backup's
// ext2/3/4 disk with filerestore (no kernel mount), and publishes
// tenants' backup policies as Temporal Schedules within PolicyLimits.
//
// Routes are versioned under /v1 and described by the OpenAPI 3 document
// served at /v1/openapi.json (openapi.json in this directory).
package api
