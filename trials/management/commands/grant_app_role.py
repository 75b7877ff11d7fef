"""``manage.py grant_app_role ROLE``: give the application's database role what it needs, and no more.

Run by the schema owner (the role that ran ``migrate``) after every migration. The application then
connects as ROLE, which owns nothing, so it cannot TRUNCATE the audit trail, ALTER or DISABLE its
append-only trigger, nor (not being a superuser) ``SET session_replication_role = replica`` to skip
triggers. ROLE may read every table, and write every table except the audit trail, where it may only
INSERT (the trigger refuses UPDATE and DELETE besides). PostgreSQL only. README "Security" has the setup.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from psycopg import sql

#: Tables the application may only read and append to.
APPEND_ONLY_TABLES = ("trials_auditevent",)


class Command(BaseCommand):
    help = "Grant the application role its privileges (run as the schema owner after migrate)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("role", help="the role the application connects as (must already exist)")

    def handle(self, *args: Any, role: str, **options: Any) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("grant_app_role is for PostgreSQL (the demo's SQLite has no roles).")
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", [role])
            found = cursor.fetchone()
            if found is None:
                raise CommandError(f"No role {role!r}: CREATE ROLE {role} LOGIN PASSWORD '...' first.")
            if found[0] or found[1]:
                raise CommandError(
                    f"Role {role!r} is a superuser or bypasses row security: use a plain role."
                )
            cursor.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner = %s", [role]
            )
            owned = [row[0] for row in cursor.fetchall()]
            if owned:
                raise CommandError(
                    f"Role {role!r} owns {', '.join(owned[:5])}: migrations must run as another role."
                )
            self._grant(cursor, sql.Identifier(role))
        self.stdout.write(self.style.SUCCESS(f"Granted {role}: read and write, the audit trail append-only."))

    def _grant(self, cursor: Any, role: sql.Identifier) -> None:
        database = sql.Identifier(connection.settings_dict["NAME"])
        statements = [
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(role),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role),
        ]
        for table in APPEND_ONLY_TABLES:
            statements.append(
                sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {} FROM {}").format(
                    sql.Identifier(table), role
                )
            )
        for statement in statements:
            cursor.execute(statement)
