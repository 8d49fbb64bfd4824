"""images.captured_at: the capture time read from EXIF at ingest

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.add_column(sa.Column('captured_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.drop_column('captured_at')
