"""which undated items came in their feed's first fetch, of an age nobody can tell

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

A feed that dates none of its items has them placed at the moment they were first seen
(``normalize.place_undated``). For an item that appeared between two polls that is about
right. For the items a feed already held when it was first fetched it is not: they may be
years old, and placed at "now" they went above every dated report in the outputs (a first
poll of a corpus of feeds put undated fixtures at the top of World). ``items.age_unknown``
marks those, so that curation puts them after the dated news.

Items stored before this revision keep their place (false): which of them came in a first
fetch is not known any more.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0019'
down_revision: Union[str, Sequence[str], None] = '0018'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('items', sa.Column('age_unknown', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column('items', 'age_unknown')
