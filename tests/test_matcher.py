"""Gallery behaviour on both implementations (Qdrant Edge on disk, qdrant-client local mode),
candidate ranking and the threshold decision, and the matcher stage end to end without Kafka."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from facestream import client, contracts
from facestream.config import Settings
from facestream.contracts import ids
from facestream.runtime.stage import Record
from facestream.services.matcher import gallery as gallery_module
from facestream.services.matcher.gallery import (
    HNSW_EF_CONSTRUCT,
    HNSW_M,
    INT8_QUANTILE,
    OVERSAMPLING,
    SEARCH_EF,
    EdgeGallery,
    Gallery,
    GalleryPoint,
    Hit,
)
from facestream.services.matcher.logic import candidates, retention_due
from facestream.services.matcher.server import QdrantGallery
from facestream.services.matcher.stage import MatcherStage
from tests.helpers import RETAIN, SHA


def unit(*values: float) -> list[float]:
    v = np.zeros(128, np.float32)
    v[: len(values)] = values
    return (v / np.linalg.norm(v)).tolist()


def server_gallery(url: str, dim: int) -> QdrantGallery:
    """A collection of its own on the real Qdrant server."""
    return QdrantGallery(AsyncQdrantClient(url=url), dim, f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["edge", "qdrant"])
async def gallery(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gallery]:
    g: Gallery
    if request.param == "edge":
        g = EdgeGallery(tmp_path / "gallery", 128)
    else:
        g = server_gallery(request.getfixturevalue("qdrant_server"), 128)
    await g.open()
    yield g
    await g.close()


def point(subject: str, watchlist: str, vector: list[float], image: str = "img") -> GalleryPoint:
    return GalleryPoint(ids.point_id(subject, image, 0), vector, {"subject_id": subject, "watchlist": watchlist})


async def test_upsert_is_idempotent_and_search_ranks(gallery: Gallery) -> None:
    pts = [point("alice", "w1", unit(1, 0)), point("bob", "w2", unit(0, 1)), point("alice", "w1", unit(1, 0.2), "img2")]
    await gallery.upsert(pts)
    await gallery.upsert(pts)  # redelivery
    assert await gallery.count() == 3
    [hits] = await gallery.search([unit(1, 0.1)], 10, 0.0)
    assert hits[0].subject_id == "alice"
    assert hits[0].score > 0.98
    [only_w2] = await gallery.search([unit(1, 0.1)], 10, 0.0, ["w2"])
    assert {h.subject_id for h in only_w2} == {"bob"}
    [above] = await gallery.search([unit(0, 1)], 10, 0.9)
    assert [h.subject_id for h in above] == ["bob"]


async def test_erasing_a_subject_removes_all_its_points(gallery: Gallery) -> None:
    await gallery.upsert(
        [point("alice", "w", unit(1)), point("alice", "w", unit(1, 1), "i2"), point("bob", "w", unit(0, 1))]
    )
    await gallery.delete_subject("alice")
    assert await gallery.count() == 1
    [hits] = await gallery.search([unit(1)], 10, -1.0)
    assert {h.subject_id for h in hits} == {"bob"}


async def test_edge_gallery_survives_a_restart(tmp_path: Path) -> None:
    g = EdgeGallery(tmp_path / "g", 128)
    await g.open()
    await g.upsert([point("alice", "w", unit(1))])
    await g.close()
    g2 = EdgeGallery(tmp_path / "g", 128)
    await g2.open()
    assert await g2.count() == 1
    await g2.close()


async def test_edge_gallery_builds_its_graph_aside_and_loses_no_change_made_meanwhile(tmp_path: Path) -> None:
    """Once `index_after` points wait for the graph, it is built in a child process on a copy;
    changes made during the build (an upsert, an erasure) reach the built shard that replaces the
    live one; a restart opens the built shard; one shard folder is left."""
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((600, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    g = EdgeGallery(tmp_path / "g", 128, index_after=500)
    await g.open()
    assert not await g.index_now()  # nothing to index yet
    await g.upsert([point(f"s{i}", "w", vectors[i].tolist()) for i in range(499)])
    assert g._build is None  # below index_after: the scan serves
    await g.upsert([point("s499", "w", vectors[499].tolist())])
    build = g._build
    assert build is not None  # started by the upsert that reached index_after
    # Meanwhile: a new subject enrolled and one erased, on the live shard and in the journal.
    await g.upsert([point("late", "w", vectors[500].tolist())])
    await g.delete_subject("s7")
    [hits] = await g.search([vectors[3].tolist()], 1, 0.5)
    assert [h.subject_id for h in hits] == ["s3"]  # searches go on during the build
    await build
    assert g.builds == 1
    assert g.unindexed() < 10  # the graph holds the copied points; later ones wait for the next
    assert await g.count() == 500
    assert await g.point_ids("s7") == []
    [hits] = await g.search([vectors[500].tolist()], 1, 0.5)
    assert [h.subject_id for h in hits] == ["late"]
    found = await g.search([v.tolist() for v in vectors[:50]], 1, 0.5)
    assert [h[0].subject_id for h in found if h] == [f"s{i}" for i in range(50) if i != 7]
    await g.close()
    assert [p.name for p in sorted((tmp_path / "g").iterdir())] == ["1", "CURRENT"]
    again = EdgeGallery(tmp_path / "g", 128, index_after=500)
    await again.open()
    assert await again.count() == 500
    assert again.unindexed() < 10
    await again.close()


async def test_a_log_file_that_goes_during_the_copy_does_not_fail_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write-ahead-log file listed by the copy and gone before it was read once failed a build.
    That timing cannot be provoked on cue, so the first copy of a log file here fails as it did
    then (ENOENT); the copy is made again and the build goes on. A folder left where the copy goes
    (a build killed earlier) does not stop it either."""
    failed: list[str] = []

    def vanishing(src: str, dst: str) -> object:
        if "/wal/" in src and not failed:
            failed.append(src)
            raise FileNotFoundError(2, "No such file or directory", src)
        return shutil.copy2(src, dst)

    monkeypatch.setattr(gallery_module, "_copy_file", vanishing)
    rng = np.random.default_rng(14)
    vectors = rng.standard_normal((300, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    g = EdgeGallery(tmp_path / "g", 128, index_after=300)
    await g.open()
    (tmp_path / "g" / "1").mkdir()
    (tmp_path / "g" / "1" / "left-over").write_bytes(b"x")
    await g.upsert([point(f"s{i}", "w", vectors[i].tolist()) for i in range(300)])
    assert g._build is not None
    await g.delete_subject("s9")  # during the build: the copy's log numbers it after the copied points
    await g._build
    assert failed
    assert g.builds == 1
    assert await g.count() == 299
    assert not (tmp_path / "g" / "1" / "left-over").exists()
    [hits] = await g.search([vectors[5].tolist()], 1, 0.5)
    assert [h.subject_id for h in hits] == ["s5"]
    await g.close()


async def test_concurrent_upserts_start_one_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The matcher upserts from concurrent tasks; two that both found enough points waiting once
    started two builds on one target folder, and each removed the other's files (both failed)."""
    real = asyncio.create_subprocess_exec
    started: list[tuple[str, ...]] = []

    async def counted(*args: str, **kwargs: object) -> asyncio.subprocess.Process:
        started.append(args)
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gallery_module.asyncio, "create_subprocess_exec", counted)
    rng = np.random.default_rng(15)
    vectors = rng.standard_normal((200, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    g = EdgeGallery(tmp_path / "g", 128, index_after=10**6)
    await g.open()
    await g.upsert([point(f"s{i}", "w", vectors[i].tolist()) for i in range(200)])
    g.index_after = 200
    await asyncio.gather(g._maybe_build(), g._maybe_build())  # both ask before either has started one
    assert g._build is not None
    await g._build
    assert (len(started), g.builds) == (1, 1)
    assert await g.count() == 200
    await g.close()


async def test_the_graph_walks_int8_copies_and_answers_as_an_exact_search_does(tmp_path: Path) -> None:
    """The built graph holds int8 copies of the vectors (a million-point build and search take half
    as long: bench/gallery_scale.py); its candidates are scored again with the floats, so a
    candidate just above the threshold is returned with its exact score, as a scan returns it."""
    rng = np.random.default_rng(16)
    centres = rng.standard_normal((500, 128)).astype(np.float32)
    vectors = np.repeat(centres, 4, axis=0) + 0.06 * rng.standard_normal((2000, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    g = EdgeGallery(tmp_path / "g", 128, index_after=2000)
    await g.open()
    await g.upsert([point(f"s{i}", "w", vectors[i].tolist()) for i in range(2000)])
    assert g._build is not None
    await g._build
    assert g.builds == 1
    assert g.unindexed() == 0
    live = tmp_path / "g" / (tmp_path / "g" / "CURRENT").read_text().strip()
    config = json.loads((live / "edge_config.json").read_text())
    assert config["quantization_config"]["scalar"]["type"] == "int8"
    queries = vectors[rng.choice(2000, 100, replace=False)] + 0.08 * rng.standard_normal((100, 128)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for q in queries:
        scores = vectors @ q
        threshold = float(np.sort(scores)[-3]) - 1e-4  # the third best is just above it
        [hits] = await g.search([q.tolist()], 10, threshold)
        want = sorted((float(scores[i]), f"s{i}") for i in np.flatnonzero(scores >= threshold))[::-1]
        assert [h.subject_id for h in hits] == [name for _, name in want]
        assert [h.score for h in hits] == pytest.approx([score for score, _ in want], abs=1e-5)
    await g.close()


async def test_a_server_gallery_is_made_and_searched_as_the_embedded_one(qdrant_server: str) -> None:
    """The collection on the real Qdrant server has the embedded shard's graph and int8 copies,
    and its searches ask for the same ef and rescoring, so both answer alike."""
    g = server_gallery(qdrant_server, 128)
    await g.open()
    try:
        info = await g.client.get_collection(g.name)
        assert (info.config.hnsw_config.m, info.config.hnsw_config.ef_construct) == (HNSW_M, HNSW_EF_CONSTRUCT)
        scalar = info.config.quantization_config.scalar  # type: ignore[union-attr]
        assert (scalar.type, scalar.quantile, scalar.always_ram) == ("int8", INT8_QUANTILE, True)
        sent: list[Any] = []
        query_batch_points = g.client.query_batch_points

        async def recorded(name: str, requests: list[Any], **kwargs: Any) -> Any:
            sent.extend(requests)
            return await query_batch_points(name, requests=requests, **kwargs)

        g.client.query_batch_points = recorded  # type: ignore[method-assign]
        await g.upsert([point("alice", "w", unit(1)), point("bob", "w", unit(0, 1))])
        [hits] = await g.search([unit(1, 0.1)], 10, 0.5)
        assert [h.subject_id for h in hits] == ["alice"]
        [request] = sent
        assert request.params.hnsw_ef == SEARCH_EF
        assert (request.params.quantization.rescore, request.params.quantization.oversampling) == (True, OVERSAMPLING)
    finally:
        await g.client.delete_collection(g.name)
        await g.close()


async def test_closing_the_edge_gallery_during_a_build_stops_the_build(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    vectors = rng.standard_normal((300, 128)).astype(np.float32)
    g = EdgeGallery(tmp_path / "g", 128, index_after=300)
    await g.open()
    await g.upsert([point(f"s{i}", "w", (v / np.linalg.norm(v)).tolist()) for i, v in enumerate(vectors)])
    assert g._build is not None
    await g.close()  # before the child is done
    assert [p.name for p in sorted((tmp_path / "g").iterdir())] == ["0", "CURRENT"]  # the copy is gone
    again = EdgeGallery(tmp_path / "g", 128, index_after=300)
    await again.open()
    assert await again.count() == 300
    await again.close()


async def test_a_failed_graph_build_leaves_the_live_shard_and_waits_before_trying_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build's child process is replaced by one that exits 3 (a crash or a full disk cannot be
    provoked on cue): the live shard keeps every point, the copy goes, and the next upserts do not
    start another copy at once."""
    real = asyncio.create_subprocess_exec
    started: list[tuple[str, ...]] = []

    async def crashing(*args: str, **kwargs: object) -> asyncio.subprocess.Process:
        started.append(args)
        return await real(sys.executable, "-c", "raise SystemExit(3)")

    monkeypatch.setattr(gallery_module.asyncio, "create_subprocess_exec", crashing)
    rng = np.random.default_rng(13)
    vectors = rng.standard_normal((400, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    g = EdgeGallery(tmp_path / "g", 128, index_after=200)
    await g.open()
    await g.upsert([point(f"s{i}", "w", vectors[i].tolist()) for i in range(200)])
    assert g._build is not None
    await g._build
    assert g.builds == 0
    await g.upsert([point(f"s{i}", "w", vectors[i].tolist()) for i in range(200, 400)])
    assert g._build is None  # not again for RETRY_BUILD_S
    assert len(started) == 1
    assert await g.count() == 400
    await g.close()
    assert [p.name for p in sorted((tmp_path / "g").iterdir())] == ["0", "CURRENT"]


async def test_edge_gallery_moves_a_shard_from_before_versioned_folders(tmp_path: Path) -> None:
    """A shard written straight into the gallery's folder (before CURRENT) is moved, not lost."""
    import qdrant_edge as qe

    shard = qe.EdgeShard.create(
        str(tmp_path / "g"), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=128, distance=qe.Distance.Cosine))
    )
    shard.update(qe.UpdateOperation.upsert_points([qe.Point(str(uuid.uuid4()), unit(1), {"subject_id": "a"})]))
    shard.flush()
    shard.close()
    g = EdgeGallery(tmp_path / "g", 128)
    await g.open()
    assert await g.count() == 1
    await g.close()
    assert (tmp_path / "g" / "CURRENT").read_text() == "0"


def test_candidates_one_per_subject_ranked_above_threshold() -> None:
    hits = [Hit("1", 0.61, "a", "w"), Hit("2", 0.72, "a", "w"), Hit("3", 0.50, "b", "w"), Hit("4", 0.30, "c", "w")]
    found = candidates(hits, 0.44, 5)
    assert [(c.subject_id, c.score, c.rank) for c in found] == [("a", 0.72, 1), ("b", 0.5, 2)]
    assert candidates(hits, 0.8, 5) == []
    assert len(candidates(hits, 0.0, 1)) == 1


def embedded(image_id: str, vector: list[float], intent: dict[str, object]) -> dict[str, object]:
    event = {
        "schema_version": 1,
        "event_type": "face.embedded",
        "event_id": ids.event_id("embedding", image_id, 0, SHA),
        "image_id": image_id,
        "image_sha256": SHA,
        "trace_id": uuid.uuid4().hex,
        "face_index": 0,
        "face_count": 1,
        "bbox": [0, 0, 10, 10],
        "det_score": 0.9,
        "embedding": vector,
        "model": {"name": "sface", "version": "2021dec"},
        "intent": intent,
        "source": "test",
        "captured_at": "2026-01-01T00:00:00Z",
        "occurred_at": "2026-01-01T00:00:01Z",
    }
    contracts.validate("face.embedded", event)
    return event


async def test_stage_enrols_then_searches(tmp_path: Path) -> None:
    """The stage's logic without a broker (follow=False): the replica's log-following is tested
    in tests/test_gallery_log.py."""
    settings = Settings(data_dir=tmp_path, threshold=0.5)
    stage = MatcherStage(settings, follow=False)
    await stage.start()
    enrol = client.enroll_intent(
        "alice",
        "w1",
        lawful_basis="explicit_consent",
        consent_ref="c/1",
        retain_until=RETAIN,
        source_attestation="provided in person",
        enrolled_by="clerk",
    )
    search = client.search_intent("find alice", "CASE-3", "investigator")
    try:
        e = embedded("enrol-1", unit(1, 0), enrol)
        r = [Record(contracts.dumps(e), b"enrol-1", "t", 0, 0), Record(contracts.dumps(e), b"enrol-1", "t", 0, 1)]
        outcomes = await stage.process(r)
        # A new subject: its data key, then the point (embedding encrypted with it), then the result.
        # The key goes out again with each point until the keys topic gives it back (the stage
        # reads nothing here): a point never depends on a key record that failed to be written.
        topics = [[o.topic for o in outcome.outputs] for outcome in outcomes]
        assert topics == [["gallery.keys", "gallery", "audit.entries", "matches"]] * 2
        entry = outcomes[0].outputs[2].value  # who enrolled whom, under which consent reference
        assert (entry["action"], entry["actor"], entry["refs"]["subject_id"]) == ("enrolment", "clerk", "alice")
        assert entry["details"]["consent_ref"] == "c/1"
        assert "retain_until" not in str(entry)  # a reference to the consent, not its details
        assert [o.outputs[-1].value["status"] for o in outcomes] == ["enrolled", "enrolled"]
        key, record = outcomes[0].outputs[:2]
        assert outcomes[1].outputs[0].value == key.value  # the same key record, not a second key
        contracts.validate("gallery.point", record.value)  # the system of record gets the point
        assert record.key == record.value["point_id"] == outcomes[1].outputs[1].key  # redelivery: the same key
        assert key.key == f"alice/{record.value['embedding_enc']['key_id']}"
        assert "embedding" not in record.value  # only sealed with the subject's key
        assert record.value["subject_id"] == "alice"
        assert await stage.gallery.count() == 1  # the redelivered enrolment added nothing
        probes = [embedded("p1", unit(1, 0.3), search), embedded("p2", unit(0, 1), search)]
        outcomes = await stage.process([Record(contracts.dumps(p), b"p", "t", 0, i) for i, p in enumerate(probes)])
    finally:
        await stage.stop()
    hit, miss = (o.outputs[0].value for o in outcomes)
    for value in (hit, miss):
        contracts.validate("match.result", value)
        assert value["threshold"] == 0.5
        # A fixed threshold: the rate expected at it for this gallery (of one), and the target.
        point = value["operating_point"]
        assert point["target_false_positive_identification_rate"] == 0.01
        assert (point["gallery_size"], point["threshold_follows_gallery"]) == (1, False)
        assert point["false_positive_identification_rate"] < 0.01
        assert value["review"].startswith("candidate")
    assert hit["status"] == "match"
    assert hit["candidates"][0]["subject_id"] == "alice"
    assert hit["candidates"][0]["rank"] == 1
    assert miss["status"] == "no_match"
    assert miss["candidates"] == []


def test_retention_due_takes_a_subject_whose_terms_have_all_passed() -> None:
    now = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    terms = {
        "p1": ("gone", "2026-12-02"),  # its day has begun: passed
        "p2": ("gone", "2026-12-02T11:00:00Z"),
        "p3": ("stays", "2026-12-01"),  # passed, but the subject has a later term: only the point goes
        "p4": ("stays", "2027-06-30"),
        "p5": ("fresh", "2026-12-02T12:00:01Z"),
        "p6": ("odd", "next year"),  # never written by the matcher: named, left alone
    }
    subjects, points, unreadable = retention_due(terms, now)
    assert subjects == {"gone": "2026-12-02T11:00:00Z"}
    assert points == ["p3"]
    assert unreadable == ["p6"]


async def test_gallery_terms_lists_every_point(gallery: Gallery) -> None:
    """Both implementations give the sweeper every point's subject and term."""
    await gallery.upsert(
        [
            GalleryPoint(str(uuid.uuid4()), unit(1, i), {"subject_id": f"s{i}", "retain_until": f"2027-01-0{i}"})
            for i in range(1, 4)
        ]
    )
    assert sorted((await gallery.terms()).values()) == [
        ("s1", "2027-01-01"),
        ("s2", "2027-01-02"),
        ("s3", "2027-01-03"),
    ]
