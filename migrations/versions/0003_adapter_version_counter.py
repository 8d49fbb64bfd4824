"""a per-collection counter of issued adapter versions

A version number, once given, is never given again: deleting the newest adapter and tuning anew
must not hand out the same "v<N>" that old jobs and clients pinned to that number still name.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('collections') as batch:
        batch.add_column(sa.Column('adapter_versions_issued', sa.Integer(), nullable=False, server_default='0'))
    op.execute(
        "UPDATE collections SET adapter_versions_issued = "
        "(SELECT COALESCE(MAX(adapters.version), 0) FROM adapters WHERE adapters.collection_id = collections.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table('collections') as batch:
        batch.drop_column('adapter_versions_issued')
