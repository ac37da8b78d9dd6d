"""each story-matching key row names its item's story, so that a lookup by key needs no join

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07

Story matching looks stories up by key: the stories whose items carry each of a poll's rare
names and lead-copy phrases. Each carrier's story was read from ``items`` (through
``ix_items_story_of``), one index seek per carrier row, and a poll reads hundreds of them.
``item_match_keys.story_id`` holds it in the key's own row, which the lookup reads anyway;
merges and an editor's splits move it with the item. ``ix_items_story_of`` (id, story_id),
which migration 0011 made for that seek alone, is dropped: one index fewer to write for every
item stored.

Rows stored before this revision are given their item's story here. The column is nullable so
that SQLite can add it without copying the table; every row written from here on has it.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0022'
down_revision: Union[str, Sequence[str], None] = '0021'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('item_match_keys', sa.Column('story_id', sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            'UPDATE item_match_keys SET story_id = items.story_id FROM items WHERE items.id = item_match_keys.item_id'
        )
    else:
        op.execute(
            'UPDATE item_match_keys SET story_id = (SELECT items.story_id FROM items WHERE items.id = item_match_keys.item_id)'
        )
    op.drop_index('ix_items_story_of', table_name='items')


def downgrade() -> None:
    op.create_index('ix_items_story_of', 'items', ['id', 'story_id'], unique=False)
    # SQLite (3.35 on) drops a column in place; Alembic's batch mode would copy the table
    # and lose its WITHOUT ROWID.
    op.execute('ALTER TABLE item_match_keys DROP COLUMN story_id')
