"""story lookup indexes

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

Story matching reads, for each lookup key, which stories its items belong to, and for each
candidate story, which of its items come first. Both read ``items`` rows only for their story,
sort time and update count, and an ``items`` row is large (texts, features): the rows a poll
touches are scattered over the whole table and mostly miss SQLite's page cache. Two narrow
indexes answer both reads without reading the rows:

* ``ix_items_story_of`` (id, story_id): an item's story. SQLite never prefers an index to its
  rowid for ``id = ?``, so the SQLite statements name it (``INDEXED BY``);
* ``ix_items_story_members`` (story_id, sort_at, id, update_count) replaces ``ix_items_story``
  (story_id), whose every use it serves as well (same leading column).

Nothing is rewritten: only indexes change.
"""
from typing import Sequence, Union

from alembic import op


revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_items_story_of', 'items', ['id', 'story_id'], unique=False)
    op.create_index('ix_items_story_members', 'items', ['story_id', 'sort_at', 'id', 'update_count'], unique=False)
    op.drop_index('ix_items_story', table_name='items')


def downgrade() -> None:
    op.create_index('ix_items_story', 'items', ['story_id'], unique=False)
    op.drop_index('ix_items_story_members', table_name='items')
    op.drop_index('ix_items_story_of', table_name='items')
