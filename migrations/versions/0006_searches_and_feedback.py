"""searches (the recent result lists) and feedback (relevant / not-relevant marks)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'searches',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('collection_id', sa.Integer(), sa.ForeignKey('collections.id', ondelete='CASCADE'), nullable=False),
        sa.Column('adapter', sa.String(length=24), nullable=False),
        sa.Column('served_by', sa.String(length=24), nullable=False),
        sa.Column('query', sa.JSON(), nullable=False),
        sa.Column('image_ids', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_searches_collection_id', 'searches', ['collection_id'])
    op.create_table(
        'feedback',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('collection_id', sa.Integer(), sa.ForeignKey('collections.id', ondelete='CASCADE'), nullable=False),
        sa.Column('image_id', sa.Integer(), sa.ForeignKey('images.id', ondelete='CASCADE'), nullable=False),
        sa.Column('search_id', sa.Integer(), nullable=True),
        sa.Column('query', sa.JSON(), nullable=False),
        sa.Column('query_text', sa.Text(), nullable=True),
        sa.Column('query_image_id', sa.Integer(), nullable=True),
        sa.Column('relevant', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_feedback_collection_id', 'feedback', ['collection_id'])
    op.create_index('ix_feedback_image_id', 'feedback', ['image_id'])
    op.create_index('ix_feedback_query_image_id', 'feedback', ['query_image_id'])


def downgrade() -> None:
    op.drop_table('feedback')
    op.drop_table('searches')
