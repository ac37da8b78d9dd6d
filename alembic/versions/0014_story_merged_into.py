"""where a merged story went

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

Story matching merges a story of one outlet into another story when a second outlet's report
shows the two to be one event (``stories.Decision.absorbs``). It used to merge only stories no
reader could have seen yet, and deleted the merged one's row. Now it also merges published
ones, so the row stays: ``stories.merged_into`` names the story it became, and its page and
its number lead there.

Nothing is rewritten: existing stories get NULL (not merged).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0014'
down_revision: Union[str, Sequence[str], None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# Plain ALTER TABLE on both backends, as in 0009: a batch operation would copy and drop the
# stories table, which the items refer to.


MERGED = sa.text('merged_into IS NOT NULL')


def upgrade() -> None:
    op.add_column('stories', sa.Column('merged_into', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
    # Only the merged rows: a merge finds the rows forwarding to the story it merges here.
    op.create_index('ix_stories_merged_into', 'stories', ['merged_into'], unique=False,
                    sqlite_where=MERGED, postgresql_where=MERGED)


def downgrade() -> None:
    op.drop_index('ix_stories_merged_into', table_name='stories')
    op.execute('DELETE FROM stories WHERE merged_into IS NOT NULL')
    op.drop_column('stories', 'merged_into')
