"""an index of the stories an editor changed, so that a running worker finds them at each poll

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07

A worker keeps when each story it judged began, and refuses a story begun too long before a
new item without reading it (``storymatch._DecodedMembers``). ``aggregator split`` in another
process can move a story's first member away, so that the story begins later: the worker
asks at each poll which stories an editor changed since it last asked, and forgets what it
kept of them. This partial index holds only those few stories (``stories.edited_at`` is
null for every other), so asking reads none of the rest.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0021'
down_revision: Union[str, Sequence[str], None] = '0020'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

EDITED = sa.text("edited_at IS NOT NULL")


def upgrade() -> None:
    op.create_index('ix_stories_edited_at', 'stories', ['edited_at'], sqlite_where=EDITED, postgresql_where=EDITED)


def downgrade() -> None:
    op.drop_index('ix_stories_edited_at', table_name='stories')
