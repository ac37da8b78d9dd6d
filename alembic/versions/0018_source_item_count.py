"""how many items each source has stored, kept as items come and go

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07

/metrics (every scrape), /status and ``aggregator sources`` counted the items table, all of it
or grouped by source: a read of every item, growing with the database until a scrape of a
service that ran for years took a second. ``sources.item_count`` is changed in the transactions
that insert and delete items, so those readers add up one row per source instead.

Existing sources get their count from one grouped count of the items stored now, in the
migration's transaction: the figures stay exact from the first start on. A process of the
previous version still writing while this runs would not change the column, so the service is
upgraded with its writers stopped, as for any migration.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0018'
down_revision: Union[str, Sequence[str], None] = '0017'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('sources', sa.Column('item_count', sa.Integer(), server_default=sa.text('0'), nullable=False))
    # UPDATE ... FROM: PostgreSQL, and SQLite since 3.33 (RETURNING, which the store uses, needs 3.35).
    op.execute(
        'UPDATE sources SET item_count = counted.items'
        ' FROM (SELECT source_id, count(*) AS items FROM items GROUP BY source_id) AS counted'
        ' WHERE counted.source_id = sources.id'
    )


def downgrade() -> None:
    op.drop_column('sources', 'item_count')
