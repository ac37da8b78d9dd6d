"""items' story in the sort-time index

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

Story matching counts the stories with an item in its window (what term counts are shares
of). With ``ix_items_sort`` on ``sort_at`` alone, that count looked up each of the window's
items in the large ``items`` table for its story: about 12 ms over 20,000 items, every few
polls. With the story id in the index the count reads the index alone.

Nothing is rewritten: only an index changes. Every read by ``sort_at`` still uses it.
"""
from typing import Sequence, Union

from alembic import op


revision: str = '0013'
down_revision: Union[str, Sequence[str], None] = '0012'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.drop_index('ix_items_sort', table_name='items')
    op.create_index('ix_items_sort', 'items', ['sort_at', 'story_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_items_sort', table_name='items')
    op.create_index('ix_items_sort', 'items', ['sort_at'], unique=False)
