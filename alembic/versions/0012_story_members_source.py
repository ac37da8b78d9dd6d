"""story members' source in their index

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

Story matching now asks which source each of a candidate story's first members comes from: a
story only the polled source's items are in takes that source's items only as copies (an
outlet's own names are no evidence). ``ix_items_story_members`` answers that read without the
large ``items`` rows (migration 0011 says why that matters), so it carries the source id too.

Nothing is rewritten: only an index changes.
"""
from typing import Sequence, Union

from alembic import op


revision: str = '0012'
down_revision: Union[str, Sequence[str], None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS = ['story_id', 'sort_at', 'id', 'update_count']


def upgrade() -> None:
    op.drop_index('ix_items_story_members', table_name='items')
    op.create_index('ix_items_story_members', 'items', [*COLUMNS, 'source_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_items_story_members', table_name='items')
    op.create_index('ix_items_story_members', 'items', COLUMNS, unique=False)
