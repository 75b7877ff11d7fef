"""Database triggers that make trials_auditevent append-only.

The model and queryset already refuse updates and deletes; the triggers also stop raw SQL, other
clients and the admin. PostgreSQL and SQLite (the demo database) each get their own dialect.
TRUNCATE is deliberately not blocked on PostgreSQL: it needs table ownership, and the test runner
uses it to reset the database between transactional tests.
"""

from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION trials_auditevent_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'trials_auditevent is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS trials_auditevent_append_only ON trials_auditevent;
CREATE TRIGGER trials_auditevent_append_only
    BEFORE UPDATE OR DELETE ON trials_auditevent
    FOR EACH ROW EXECUTE FUNCTION trials_auditevent_refuse_change();
"""

PG_REVERSE = """
DROP TRIGGER IF EXISTS trials_auditevent_append_only ON trials_auditevent;
DROP FUNCTION IF EXISTS trials_auditevent_refuse_change();
"""

SQLITE_FORWARD = [
    """
    CREATE TRIGGER IF NOT EXISTS trials_auditevent_no_update
    BEFORE UPDATE ON trials_auditevent
    BEGIN
        SELECT RAISE(ABORT, 'trials_auditevent is append-only: UPDATE refused');
    END;
    """,
    """
    CREATE TRIGGER IF NOT EXISTS trials_auditevent_no_delete
    BEFORE DELETE ON trials_auditevent
    BEGIN
        SELECT RAISE(ABORT, 'trials_auditevent is append-only: DELETE refused');
    END;
    """,
]

SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS trials_auditevent_no_update;",
    "DROP TRIGGER IF EXISTS trials_auditevent_no_delete;",
]


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        # A plain cursor without parameters: the PL/pgSQL body contains "%" placeholders of RAISE.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(PG_FORWARD)
    elif vendor == "sqlite":
        for statement in SQLITE_FORWARD:
            schema_editor.execute(statement)


def reverse(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(PG_REVERSE)
    elif vendor == "sqlite":
        for statement in SQLITE_REVERSE:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("trials", "0001_initial")]

    operations = [migrations.RunPython(forward, reverse, elidable=False)]
