"""The feed corpus (``shared/corpus``) as the sources of one feeds.yaml, every file served by the
tests' real HTTP server, and how the items a poll of it stored joined other sources' stories:
what ``tests/test_corpus_run.py`` asserts on and ``bench/corpus_joins.py`` lists for a reader."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_config
from tests.server import FeedServer, Route
from tests.test_corpus import CORPUS, index_rows

SETTINGS = "parse_workers: 2\nconcurrency: 32\nper_host_concurrency: 32"

# Items that joined a story other sources' items are in, by how: a shared URL, a copy, or names
# and meaning (an independent report), read from their explanations.
CROSS_OUTLET_JOINS = (
    "select case when i.match_reason like '%same URL%' then 'by URL' when i.match_reason like '%copies item%' "
    "or i.match_reason like '%copies an item%' then 'as copies' else 'as independent reports' end, count(*) "
    "from items i where i.match_reason like 'joined%' "
    "and i.story_id in (select story_id from items group by story_id having count(distinct source_id) > 1) group by 1"
)


def serve_corpus(server: FeedServer, workdir: Path, database: str | None = None) -> tuple[list[dict[str, str]], Path]:
    """Serve every file of the corpus's INDEX.tsv at its path (``application/json`` for ``.json``
    files, else ``application/xml`` without a charset, so the document's own declaration decides
    as it did for the INDEX), and write a feeds.yaml in ``workdir`` with each a source named by
    its path (a real SQLite file beside it, or the ``database`` URL given; no outputs): the
    INDEX rows and the config."""
    rows = index_rows()
    for row in rows:
        path = row["path"]
        content_type = "application/json" if path.endswith(".json") else "application/xml"
        server.add(f"/{path}", Route(body=(CORPUS / path).read_bytes(), content_type=content_type))
    config = write_config(
        workdir,
        [{"name": row["path"], "url": server.url(f"/{row['path']}")} for row in rows],
        settings=SETTINGS if database is None else f"{SETTINGS}\ndatabase: {database}",
        outputs="outputs: []",
    )
    return rows, config
