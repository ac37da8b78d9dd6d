"""story features and match reasons

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

Story engine v2 keeps, per item, what it matched on and why:

* ``items.match_features``: the item's meaning vector (quantised) and the hashes of its names
  and figures (``stories.Features.dumps()``), computed where it was parsed;
* ``items.match_reason``: why the item joined its story, or why it started one (near misses).

Both are NULL for items stored before: they keep their stories (nothing is re-matched, so no
story and no story id changes) and simply cannot be judged on meaning until they are updated.
The names' lookup keys share ``item_match_keys`` (integers offset past the lead-copy keys).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# Plain ALTER TABLE on both backends (SQLite has ADD and DROP COLUMN since 3.35): a batch
# operation would copy and drop the items table, and dropping it cascades to the match keys.


def upgrade() -> None:
    op.add_column('items', sa.Column('match_features', sa.Text(), nullable=True))
    op.add_column('items', sa.Column('match_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute('DELETE FROM item_match_keys WHERE key >= 8589934592')  # the name keys (2**33 and up)
    op.drop_column('items', 'match_reason')
    op.drop_column('items', 'match_features')
