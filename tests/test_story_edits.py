"""An editor's corrections of story matching through the CLI, on real stores: ``aggregator split``
moves items out of a story they do not belong in, ``aggregator merge`` joins two stories of one
event; the outputs follow, ids stay, and matching does not undo either."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest

from aggregator.cli import main
from tests.conftest import KEYS_OUT_OF_STEP, query_rows, write_config
from tests.server import FeedServer, Route
from tests.test_stories_v2 import ORIGINAL, REWRITE, THIRD, UNRELATED, rss


def stories_of(database_url: str) -> dict[str, tuple[int, str]]:
    """Each item's story (number, tag: id), by guid."""
    rows = query_rows(
        database_url,
        "select items.guid, stories.id, stories.uid from items join stories on stories.id = items.story_id",
    )
    return {str(guid): (int(str(story)), str(uid)) for guid, story, uid in rows}


def item_ids(database_url: str) -> dict[str, int]:
    return {str(guid): int(str(item)) for guid, item in query_rows(database_url, "select guid, id from items")}


def world_ids(tmp_path: Path) -> set[str]:
    return {e.id for e in feedparser.parse((tmp_path / "data" / "feeds" / "world.atom").read_bytes()).entries}


def test_items_split_off_a_story_stay_apart_and_a_merge_joins_two_stories(
    server: FeedServer, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    server.add("/wire", Route(body=rss("wire", [("w1", *ORIGINAL, first)])))
    server.add("/herald", Route(body=rss("herald", [("h1", *REWRITE, first + timedelta(hours=1))])))
    server.add("/courier", Route(body=rss("courier", [])))
    sources = [{"name": name, "url": server.url(f"/{name}")} for name in ("wire", "herald", "courier")]
    config = str(write_config(tmp_path, sources, settings=f"database: {database_url}"))
    assert main(["--config", config, "poll", "--once"]) == 0
    joined = stories_of(database_url)
    assert joined["h1"] == joined["w1"]  # the herald's report joined the wire's story
    story, uid = joined["w1"]
    assert world_ids(tmp_path) == {uid}

    capsys.readouterr()
    herald = item_ids(database_url)["h1"]
    assert main(["--config", config, "split", str(herald)]) == 0
    said = capsys.readouterr().out
    apart = stories_of(database_url)
    assert apart["w1"] == (story, uid)  # the story keeps its number and tag: id
    new, new_uid = apart["h1"]
    assert new != story and new_uid not in (uid, "") and new_uid.startswith("tag:")
    assert f"item {herald} left story {story} ({uid}) for story {new} ({new_uid}); republished" in said, said
    assert world_ids(tmp_path) == {uid, new_uid}  # the outputs show two stories now
    assert query_rows(database_url, KEYS_OUT_OF_STEP) == []  # the moved item's keys name its new story
    assert main(["--config", config, "story", str(new), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [item["item"] for item in shown["items"]] == [herald]
    assert f"split off story {story} into story {new} by an editor" in shown["items"][0]["reason"]

    # A third outlet's report of the event reaches both stories. Left to itself, matching would
    # join one and merge the other into it (``stories.Decision.absorbs``), undoing the split.
    server.add("/courier", Route(body=rss("courier", [("c1", *THIRD, first + timedelta(hours=2))])))
    assert main(["--config", config, "poll", "--once", "--all"]) == 0
    after = stories_of(database_url)
    assert after["w1"] == (story, uid) and after["h1"] == (new, new_uid)
    assert after["c1"] in ((story, uid), (new, new_uid))
    merged = {int(str(s)): m for s, m in query_rows(database_url, "select id, merged_into from stories")}
    assert merged[story] is None and merged[new] is None

    # The editor finds them one event after all: the split-off story joins the first again.
    assert main(["--config", config, "merge", new_uid, str(story)]) == 0
    said = capsys.readouterr().out
    assert f"story {new} ({new_uid}) merged into story {story} ({uid})" in said, said
    together = stories_of(database_url)
    assert {together[guid] for guid in ("w1", "h1", "c1")} == {(story, uid)}
    assert query_rows(database_url, KEYS_OUT_OF_STEP) == []
    assert world_ids(tmp_path) == {uid}
    assert main(["--config", config, "story", str(new)]) == 0  # its number leads to the story it joined
    shown_text = capsys.readouterr().out
    assert f"story {new} was merged into story {story}" in shown_text
    assert f"later merged from story {new} into story {story} by an editor" in shown_text


def test_a_pin_of_a_story_merged_by_an_editor_becomes_the_pin_of_the_story_it_joins(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    server.add("/wire", Route(body=rss("wire", [("w1", *ORIGINAL, first), ("w2", *UNRELATED, first)])))
    config = str(
        write_config(tmp_path, [{"name": "wire", "url": server.url("/wire")}], settings=f"database: {database_url}")
    )
    assert main(["--config", config, "poll", "--once"]) == 0
    found = stories_of(database_url)
    assert found["w1"] != found["w2"]
    assert main(["--config", config, "pin", "world", str(found["w2"][0])]) == 0
    assert main(["--config", config, "merge", str(found["w2"][0]), str(found["w1"][0])]) == 0
    rows = query_rows(database_url, "select slug, story_id, action from editorial")
    assert rows == [("world", found["w1"][0], "pin")]


def test_edits_that_cannot_be_made_say_why_and_change_nothing(
    server: FeedServer, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    server.add("/wire", Route(body=rss("wire", [("w1", *ORIGINAL, first), ("w2", *UNRELATED, first)])))
    server.add("/herald", Route(body=rss("herald", [("h1", *REWRITE, first + timedelta(hours=1))])))
    sources = [{"name": name, "url": server.url(f"/{name}")} for name in ("wire", "herald")]
    config = str(write_config(tmp_path, sources, settings=f"database: {database_url}"))
    assert main(["--config", config, "poll", "--once"]) == 0
    before = stories_of(database_url)
    assert before["w1"] == before["h1"] != before["w2"]
    ids = item_ids(database_url)
    capsys.readouterr()
    refused = {
        ("split", "999999"): "no item matches '999999'",
        ("split", "https://nowhere.example/x"): "no item matches 'https://nowhere.example/x'",
        ("split", str(ids["w1"]), str(ids["h1"])): f"story {before['w1'][0]} holds only these items",
        ("split", str(ids["w1"]), str(ids["w2"])): "the items are in different stories",
        ("merge", str(before["w1"][0]), before["h1"][1]): "are one story already",
        ("merge", "999999", str(before["w1"][0])): "no story matches '999999'",
    }
    for command, reason in refused.items():
        assert main(["--config", config, *command]) == 1, command
        err = capsys.readouterr().err
        assert reason in err and "Traceback" not in err, (command, err)
    assert stories_of(database_url) == before
    assert query_rows(database_url, "select count(*) from stories where edited_at is not null") == [(0,)]
    # An item named by its URL: the wire's link.
    assert main(["--config", config, "split", "https://herald.example/h1"]) == 0
    assert stories_of(database_url)["h1"] != before["h1"]


def test_items_can_be_split_off_only_from_one_story_and_never_all_of_it() -> None:
    from aggregator.store.storyedits import split_refusal

    assert split_refusal({10: 3, 11: 3}, {3: 3}) is None  # two of its three items
    assert split_refusal({10: 3}, {3: 2}) is None
    whole = split_refusal({10: 3, 11: 3}, {3: 2})
    assert whole is not None and whole.startswith("story 3 holds only these items")
    apart = split_refusal({10: 3, 12: 4}, {3: 5, 4: 5})
    assert apart is not None and "item 10 in story 3, item 12 in story 4" in apart
    assert split_refusal({}, {}) == "no items named"


FESTIVAL = (  # another event in the same place, the same day
    "Port Aven harbour festival opens with a parade of tall ships",
    "PORT AVEN — Thousands gathered on the quays of Port Aven on Tuesday as the annual harbour festival "
    "opened with a parade of tall ships through the Kestrel Strait, organisers said.",
)


def test_a_running_worker_judges_a_story_split_meanwhile_from_its_new_beginning(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """A worker keeps when each story it judged began (``storymatch._DecodedMembers``), so
    that a story begun too long before a new item is refused without reading it. An editor's
    split in another process can take a story's first member away: the story then begins
    later, and a report within ``STORY_SPAN`` of the members left, though not of the one split
    off, must be judged and join it, at the worker's next poll."""
    import asyncio

    from aggregator.config import load_config
    from aggregator.pipeline import Pipeline, poll_once
    from aggregator.store.database import ensure_schema, make_engine
    from aggregator.store.repository import Store

    now = datetime.now(UTC).replace(microsecond=0)
    first = now - timedelta(hours=15)
    server.add("/wire", Route(body=rss("wire", [("w1", *ORIGINAL, first)])))
    server.add("/herald", Route(body=rss("herald", [])))
    server.add("/courier", Route(body=rss("courier", [])))
    sources = [{"name": name, "url": server.url(f"/{name}")} for name in ("wire", "herald", "courier")]
    config_path = str(write_config(tmp_path, sources, settings=f"database: {database_url}"))
    config = load_config(Path(config_path)).config
    engine = make_engine(database_url)
    try:
        ensure_schema(engine)
        store = Store(engine)
        store.sync_sources(config.source_specs(), now)
        pipeline = Pipeline(config, store, clock=lambda: now)  # one worker, running throughout
        asyncio.run(poll_once(pipeline, all_sources=True))
        server.add("/herald", Route(body=rss("herald", [("h1", *REWRITE, first + timedelta(hours=10))])))
        asyncio.run(poll_once(pipeline, all_sources=True))
        joined = stories_of(database_url)
        assert joined["h1"] == joined["w1"]  # 10 h after the wire's report: one story
        story = joined["w1"][0]
        # A report of another event in the same place reaches the story and is refused: the
        # worker has judged the story, and keeps when it began.
        server.add(
            "/herald",
            Route(
                body=rss(
                    "herald",
                    [("h1", *REWRITE, first + timedelta(hours=10)), ("h2", *FESTIVAL, first + timedelta(hours=11))],
                )
            ),
        )
        asyncio.run(poll_once(pipeline, all_sources=True))
        assert stories_of(database_url)["h2"][0] != story

        # The editor splits the wire's report, the story's first member, off: the story now
        # begins with the herald's, 10 h later.
        assert main(["--config", config_path, "split", str(item_ids(database_url)["w1"])]) == 0
        assert stories_of(database_url)["h1"][0] == story

        # 14 h after the wire's report, 4 h after the herald's: within the story's span now.
        server.add("/courier", Route(body=rss("courier", [("c1", *THIRD, first + timedelta(hours=14))])))
        asyncio.run(poll_once(pipeline, all_sources=True))
    finally:
        engine.dispose()
    reason = {str(g): str(r) for g, r in query_rows(database_url, "select guid, match_reason from items")}
    assert stories_of(database_url)["c1"][0] == story, reason["c1"]


def test_a_worker_hears_of_each_edit_once_and_of_a_later_edit_again(database_url: str) -> None:
    """``storymatch._Edits``, on a real store: each poll hears of the stories edited since the
    last one asked, allowing the editor's clock to run up to ``EDITS_CLOCK_SKEW`` behind; an
    edit already heard of is not again, and a later edit of the same story is."""
    from sqlalchemy import insert, update

    from aggregator import storymatch
    from aggregator.store.database import ensure_schema, make_engine
    from aggregator.store.models import StoryRow
    from aggregator.store.repository import Store

    now = datetime.now(UTC).replace(microsecond=0)
    skew = storymatch.EDITS_CLOCK_SKEW
    engine = make_engine(database_url)
    try:
        ensure_schema(engine)
        store = Store(engine)

        def edited(story: int, at: datetime | None) -> None:
            with store.ingest() as tx:
                tx.c.execute(update(StoryRow).where(StoryRow.id == story).values(edited_at=at))

        with store.ingest() as tx:
            for story in (1, 2, 3):
                values = {"id": story, "uid": f"tag:x,2026:{story}", "key": f"k{story}"}
                tx.c.execute(insert(StoryRow).values(**values, first_seen_at=now, updated_at=now))
        edited(1, now - skew / 6)
        edited(2, now - 3 * skew)  # before the allowance: this process kept nothing of it then
        edits = storymatch._Edits()

        def heard() -> set[int]:
            with store.ingest() as tx:
                return edits.since_asked(tx)

        assert heard() == {1}
        assert heard() == set()  # heard of once
        edited(1, now)  # edited again
        edited(3, now - skew / 2)  # by a clock half the allowance behind
        assert heard() == {1, 3}
        assert heard() == set()
    finally:
        engine.dispose()
