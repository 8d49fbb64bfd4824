"""scale-out: procrastinate's job-queue schema (PostgreSQL only) and collections.index_generation

Revision ID: 0008_scale
Revises: 0007_imports
Create Date: 2026-11-26

procrastinate's tables and functions are its own ``schema.sql`` of the pinned version (pyproject.toml).
Upgrading procrastinate means a new migration that applies the package's
``procrastinate/sql/migrations/*.sql`` files between the two versions, as its docs ask.
"""
from importlib import resources
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0008_scale'
down_revision: Union[str, Sequence[str], None] = '0007_imports'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == 'postgresql'


def upgrade() -> None:
    op.add_column('collections', sa.Column('index_generation', sa.Integer(), nullable=False, server_default='0'))
    if _is_postgres():
        schema = (resources.files('procrastinate.sql') / 'schema.sql').read_text(encoding='utf-8')
        # The driver's own connection: the schema holds '%' and ':' that a parameter parser would misread.
        op.get_bind().connection.driver_connection.execute(schema)


def downgrade() -> None:
    if _is_postgres():
        op.execute("""
            DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,
                                 procrastinate_workers CASCADE;
            DO $$ DECLARE f record; BEGIN
                FOR f IN SELECT oid::regprocedure AS sig FROM pg_proc WHERE proname LIKE 'procrastinate%' LOOP
                    EXECUTE 'DROP FUNCTION IF EXISTS ' || f.sig || ' CASCADE';
                END LOOP;
            END $$;
            DROP TYPE IF EXISTS procrastinate_job_status, procrastinate_job_event_type, procrastinate_job_to_defer_v1 CASCADE;
        """)
    with op.batch_alter_table('collections') as batch:
        batch.drop_column('index_generation')
