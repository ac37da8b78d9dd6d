"""which stories an editor split or merged, so that matching leaves them as the editor made them

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07

``aggregator split`` moves items a matcher put in the wrong story into a story of their own,
and ``aggregator merge`` joins two stories of one event. Story matching merges a story into
another on its own when a later report shows two stories to be one event
(``stories.Decision.absorbs``): left to do so, it could merge the items an editor split off
back into the story they were split from. ``stories.edited_at`` marks the stories an editor
changed, and matching merges none of them.

Stories stored before this revision were changed by no editor (null).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0020'
down_revision: Union[str, Sequence[str], None] = '0019'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('stories', sa.Column('edited_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column('stories', 'edited_at')
