"""imports: jobs get a kind (existing rows are tuning jobs); import_entries lists an import job's files

Revision ID: 0007_imports
Revises: 0006
Create Date: 2026-11-26

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0007_imports'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('tuning_jobs') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=20), nullable=False, server_default='tuning'))
    op.create_table(
        'import_entries',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('job_id', sa.Integer(), sa.ForeignKey('tuning_jobs.id', ondelete='CASCADE'), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('file', sa.Text(), nullable=False),
        sa.Column('caption_file', sa.Text(), nullable=True),
        sa.Column('metadata', sa.JSON(), nullable=False),
        sa.Column('outcome', sa.String(length=20), nullable=True),
        sa.Column('image_id', sa.Integer(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.UniqueConstraint('job_id', 'position', name='uq_import_entries_job_position'),
    )
    op.create_index('ix_import_entries_job_id', 'import_entries', ['job_id'])


def downgrade() -> None:
    op.drop_table('import_entries')
    with op.batch_alter_table('tuning_jobs') as batch:
        batch.drop_column('kind')
