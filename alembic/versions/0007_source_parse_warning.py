"""source parse warning

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

sources.last_warning: what the parser had to forgive in the source's last parsed document
(ill-formed XML read by the lenient parser, a truncated last entry dropped), shown by
`aggregator sources` and /status while the source keeps working.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# Plain ALTER TABLE on both backends (SQLite >= 3.35 drops columns), never batch mode: on
# SQLite that recreates `sources`, and dropping the old table would cascade to every item.


def upgrade() -> None:
    op.add_column('sources', sa.Column('last_warning', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('sources', 'last_warning')
