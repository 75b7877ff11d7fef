#!/bin/sh
# Run once by the postgres image when it creates the database (docker-entrypoint-initdb.d): the role the
# application connects as. It owns nothing; `manage.py grant_app_role mettrack_app` (the migrate service,
# after every migration) gives it its privileges. README "Security" explains the two roles.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v app_role="${POSTGRES_APP_ROLE:-mettrack_app}" -v app_password="$POSTGRES_APP_PASSWORD" <<'SQL'
CREATE ROLE :"app_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
