"""PECN on a real PostgreSQL instance: a slice of the asset graph materialised with dagster-postgres
storage, and its lineage read back from the database.

The slice: observe the raw sources, `filtered_annotations`, and `frame_cache` partition 96, with the
smoke profile, on a smaller synthetic SSv2 than the smoke graph's (one template per task, made here
in a temporary folder, a few seconds). The instance lives in a temporary
DAGSTER_HOME whose dagster.yaml is the repository's plus `storage: {postgres: {postgres_url: ...}}`,
on a database created for this test run and dropped afterwards.

Server: `PECN_TEST_POSTGRES_URL`, default postgresql://pecn:pecn@127.0.0.1:5432/pecn_test (what
`.ci/services.sh` creates; the role needs CREATEDB). When nothing answers at that address the
postgres tests are skipped, or fail under CI=true (pecn_test_support/services.py); any other
problem (login, SQL) fails them.

Driver: SQLAlchemy 2.1 reads a plain `postgresql://` URL as psycopg 3, which dagster-postgres does
not install; the instance is given `postgresql+psycopg2://...` (psycopg2-binary, a dependency of
dagster-postgres). A `postgres_db:` block says the same with `scheme: postgresql+psycopg2`.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pytest
import yaml

from pecn_ml.profiles import get_profile
from pecn_test_support.services import require_service

REPO = Path(__file__).resolve().parents[2]
URL_ENV = "PECN_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql://pecn:pecn@127.0.0.1:5432/pecn_test"
RESOLUTION = str(get_profile("smoke").pix2pix_resolution)  # "96": the frame_cache partition built
INPUT_VERSION = "dagster/input_data_version/"
INPUT_POINTER = "dagster/input_event_pointer/"
DATA_VERSION = "dagster/data_version"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.split("@")[-1]
    user = parts.username
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}" if user else netloc))


def sqlalchemy_url(url: str) -> str:
    """The libpq URL `postgresql://...` with the psycopg2 driver named, as SQLAlchemy 2.1 needs."""
    scheme, rest = url.split("://", 1)
    assert scheme in ("postgresql", "postgres", "postgresql+psycopg2"), f"not a PostgreSQL URL: {url}"
    return "postgresql+psycopg2://" + rest


def _unreachable(url: str) -> str | None:
    """Why nothing answers at the URL's host and port (None when a TCP connection opens)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as e:
        return f"{host}:{port}: {e}"


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh, empty database on the test server for this module; dropped at the end."""
    base = os.environ.get(URL_ENV, DEFAULT_URL)
    reason = _unreachable(base)
    require_service("PostgreSQL", None if reason is None else
                    f"no server answers at {_redacted(base)} ({reason}); "
                    f"run `sudo bash .ci/services.sh` or set {URL_ENV}")
    import psycopg2

    name = f"pecn_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(base, connect_timeout=10)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(base)._replace(path="/" + name))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _postgres_home(home: Path, url: str) -> Path:
    """The repository's dagster.yaml (pools, run monitoring, ...) with PostgreSQL storage added."""
    config = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
    assert "storage" not in config, "the repository's dagster.yaml should keep the SQLite default"
    config["storage"] = {"postgres": {"postgres_url": sqlalchemy_url(url)}}
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


@pytest.fixture(scope="module")
def pg_slice(postgres_url, tmp_path_factory):
    """Materialise the slice into the PostgreSQL instance; yield (home, defs, frame_cache run id)."""
    from pecn_assets.build import build_definitions
    from pecn_assets.tools.demo import ensure_synthetic_data, materialize_all
    from pecn_assets.resources import PecnSettings
    from pecn_ml.data.templates import load_task_map
    from pecn_ml.deployment import Deployment

    root = tmp_path_factory.mktemp("pg_slice")
    settings = PecnSettings.for_profile(get_profile("smoke"), data_dir=str(root / "data"),
                                        outputs_dir=str(root / "outputs"), results_dir=str(root / "test_result"))
    one_per_task = tuple(keys[0] for keys in load_task_map().values())
    synthetic = replace(get_profile("smoke").synthetic, templates=one_per_task, task_train_per_template=2,
                        num_test=1, max_frames=40)
    ensure_synthetic_data(settings.data_path(), synthetic)
    defs = build_definitions(Deployment(profile="smoke"), settings=settings)
    home = _postgres_home(root / "dagster_home", postgres_url)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        observed = defs.resolve_job_def("observe_sources").execute_in_process(instance=instance)
        assert observed.success
        assert materialize_all(instance, defs, only=["filtered_annotations"], log=print)
        built = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("frame_cache")], partition_key=RESOLUTION)
        assert built.success
    yield home, defs, built.run_id


@pytest.fixture
def instance(pg_slice):
    """A new instance on the same config: everything read through it comes from PostgreSQL."""
    home, _, _ = pg_slice
    with dg.DagsterInstance.from_config(str(home)) as inst:
        yield inst


def _latest(instance, asset: str, partition: str | None = None) -> dg.EventLogRecord:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                              asset_partitions=[partition] if partition else None), limit=1).records
    assert records, f"no materialisation of {asset} {partition or ''} in the instance"
    return records[0]


def _latest_observation_version(instance, asset: str) -> str:
    records = instance.fetch_observations(dg.AssetKey(asset), limit=1).records
    assert records, f"no observation of {asset}"
    return records[0].asset_observation.tags[DATA_VERSION]


@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")  # one database and data set per run
def test_runs_and_events_are_stored_in_postgres(pg_slice, instance, postgres_url):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)

    # The rows themselves, read with plain SQL from the test database.
    import psycopg2

    with psycopg2.connect(postgres_url, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM runs GROUP BY status")
        runs = dict(cur.fetchall())
        cur.execute("SELECT asset_key, partition FROM event_logs "
                    "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id")
        materialised = cur.fetchall()
    assert runs == {"SUCCESS": 3}, runs  # observe_sources, filtered_annotations, frame_cache/96
    assert materialised == [('["filtered_annotations"]', None), ('["frame_cache"]', RESOLUTION)]


@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")  # one database and data set per run
def test_lineage_reads_back_from_postgres(pg_slice, instance):
    from pecn_ml.data.frame_cache import open_frame_cache
    from pecn_ml.data.versions import annotations_version, videos_version
    from pecn_ml.utils.files import sha256_file
    from pecn_ml.variants import EVAL_SETS, TRAIN_FILE

    _, defs, frame_cache_run = pg_slice
    settings = defs.resources["settings"]
    raw_annotations = _latest_observation_version(instance, "raw_annotations")
    raw_videos = _latest_observation_version(instance, "raw_videos")
    assert raw_annotations == annotations_version(settings.annotations_path())
    assert raw_videos == videos_version(settings.data_path() / "videos")

    filtered = _latest(instance, "filtered_annotations")
    mat = filtered.asset_materialization
    files = [settings.annotations_path() / name for name in (TRAIN_FILE, *EVAL_SETS.values())]
    assert mat.tags[DATA_VERSION] == "-".join(sha256_file(p)[:16] for p in files)
    assert mat.tags[INPUT_VERSION + "raw_annotations"] == raw_annotations
    code_version = defs.get_assets_def("filtered_annotations").code_versions_by_key[dg.AssetKey("filtered_annotations")]
    assert mat.tags["dagster/code_version"] == code_version
    assert mat.metadata["n_train"].value > 0
    assert mat.metadata["files"].value == [str(p) for p in files]

    cache = _latest(instance, "frame_cache", RESOLUTION)
    assert cache.run_id == frame_cache_run
    tags = cache.asset_materialization.tags
    assert tags[DATA_VERSION] == open_frame_cache(settings.data_path(), int(RESOLUTION)).version
    assert tags[INPUT_VERSION + "filtered_annotations"] == mat.tags[DATA_VERSION]
    assert tags[INPUT_VERSION + "raw_videos"] == raw_videos
    assert tags[INPUT_POINTER + "filtered_annotations"] == str(filtered.storage_id)
    meta = cache.asset_materialization.metadata
    assert meta["videos"].value == meta["decoded"].value + meta["reused"].value + meta["failed"].value > 0

    checks = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("frame_cache"), "all_videos_accounted_for"), limit=5)
    assert [c.status.value for c in checks] == ["SUCCEEDED"]
    assert checks[0].run_id == frame_cache_run


@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")  # one database and data set per run
def test_project_lineage_helpers_on_postgres(pg_slice, instance):
    """The platform's own readers (the cleanup's latest materialisations and the paths they name,
    frame_cache's automation condition) on PostgreSQL."""
    from pecn_assets.cleanup import all_materializations

    _, defs, frame_cache_run = pg_slice
    latest = {who: record for who, is_latest, record in all_materializations(instance) if is_latest}
    assert latest[f"frame_cache/{RESOLUTION}"].run_id == frame_cache_run
    assert latest[f"frame_cache/{RESOLUTION}"].asset_materialization.tags["dagster/data_version"]
    assert not any(name.startswith("ip2p_model") for name in latest)  # never materialised here
    assert any(isinstance(v, dg.PathMetadataValue)  # the paths the cleanup keeps
               for v in latest[f"frame_cache/{RESOLUTION}"].asset_materialization.metadata.values())

    frame_cache = defs.get_assets_def("frame_cache")
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                              asset_selection=dg.AssetSelection.keys("frame_cache"))
    assert first.total_requested == 0  # the first evaluation only starts the cursor
    instance.report_runless_asset_event(dg.AssetObservation(asset_key="raw_videos",
                                                            tags={"dagster/data_version": "new videos"}))
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor,
                                              asset_selection=dg.AssetSelection.keys("frame_cache"))
    assert after.get_requested_partitions(frame_cache.key) == set(frame_cache.partitions_def.get_partition_keys())


def test_sqlite_stays_the_default(tmp_path):
    """The repository's dagster.yaml sets no storage: an instance made from it uses SQLite."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert type(inst.run_storage).__name__ == "SqliteRunStorage"
        assert "Sqlite" in type(inst.event_log_storage).__name__
        assert inst.run_storage._conn_string.startswith("sqlite:///" + str(home))  # noqa: SLF001
