"""Tests for nnxlike.datasets.titanic: finding, downloading, parsing, features."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from nnxlike.datasets import (
    FEATURES_CLASSIC,
    N_FEATURES_IMPROVED,
    TITANIC_SHA256,
    TITANIC_SHA256_CRLF,
    Preprocessor,
    TitanicChecksumError,
    TitanicData,
    TitanicDataNotFoundError,
    TitanicFormatError,
    load_titanic,
    preprocess_classic,
    preprocess_improved,
    train_val_split,
)
from nnxlike.datasets import titanic as titanic_mod


def _find_shared() -> Path | None:
    candidates = [Path(__file__).resolve().parents[2] / "shared/data/titanic"]
    if os.environ.get("NNXLIKE_TITANIC_DIR"):
        candidates.append(Path(os.environ["NNXLIKE_TITANIC_DIR"]))
    for folder in candidates:
        if (folder / "train.csv").is_file() and (folder / "test.csv").is_file():
            return folder
    return None


SHARED = _find_shared()
NO_DATA = (
    "Titanic train.csv/test.csv not found in <clone>/../shared/data/titanic "
    "nor in $NNXLIKE_TITANIC_DIR"
)
needs_data = pytest.mark.skipif(SHARED is None, reason=NO_DATA)
TINY_HEADER = ",".join(titanic_mod.TEST_COLUMNS)


def _tiny_test_csv(folder: Path, passenger_id: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "test.csv"
    row = f'{passenger_id},3,"Kelly, Mr. James",male,34.5,0,0,330911,7.8292,,Q'
    path.write_text(f"{TINY_HEADER}\n{row}\n")
    return path


def _dead_url() -> str:
    with socket.socket() as s:  # bind then release: nothing listens on the port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mirror"


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    """No real data source leaks in: empty env, absent Kaggle dir, tmp cache."""
    for var in ("NNXLIKE_TITANIC_DIR", "NNXLIKE_TITANIC_URL", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NNXLIKE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(titanic_mod, "KAGGLE_DIR", tmp_path / "no-kaggle")
    monkeypatch.setattr(titanic_mod, "TITANIC_URL", _dead_url())
    return tmp_path / "cache" / "titanic"


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        entry = self.server.routes.get(self.path)
        if entry is None:
            self.send_error(404)
            return
        body, mode = entry
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":  # announce all bytes, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class Mirror:
    """A real HTTP server on 127.0.0.1 serving ``/mirror/<split>.csv``."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MirrorHandler)
        self.server.routes = {}
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mirror"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()
        self.running = True

    def serve(self, split: str, body: bytes, mode: str = "ok") -> None:
        self.server.routes[f"/mirror/{split}.csv"] = (body, mode)

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)


@pytest.fixture
def mirror():
    m = Mirror()
    try:
        yield m
    finally:
        m.stop()


def _raw(split: str) -> bytes:
    return (SHARED / f"{split}.csv").read_bytes()


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture
def payload(monkeypatch):
    """LF bytes to serve: the shared files, or (without them) a tiny stand-in whose
    hashes are patched into the module so the download path is still exercised."""

    def get(split: str) -> bytes:
        if SHARED is not None:
            return _raw(split)
        body = {
            "train": ",".join(titanic_mod.TRAIN_COLUMNS) + "\n1,0,3,"
            '"Braund, Mr. Owen Harris",male,22,1,0,A/5 21171,7.25,,S\n',
            "test": TINY_HEADER + '\n892,3,"Braund, Mr. Owen",male,,0,0,3309,7.8,,Q\n',
        }[split].encode()
        crlf = body.replace(b"\n", b"\r\n")
        monkeypatch.setitem(titanic_mod.TITANIC_SHA256, split, _sha(body))
        monkeypatch.setitem(titanic_mod.TITANIC_SHA256_CRLF, split, _sha(crlf))
        return body

    return get


# --------------------------------------------------------------------- loading


@needs_data
def test_load_from_data_dir_train_facts():
    train = load_titanic("train", data_dir=SHARED, download=False)
    assert train.split == "train" and train.path == SHARED / "train.csv"
    assert len(train) == 891 and train.columns == titanic_mod.TRAIN_COLUMNS
    assert train["PassengerId"].dtype == np.int64
    assert train["PassengerId"].tolist() == list(range(1, 892))
    assert np.bincount(train["Survived"]).tolist() == [549, 342]
    assert train["Age"].dtype == np.float64 and np.isnan(train["Age"]).sum() == 177
    assert (train["Embarked"] == "").sum() == 2
    assert (train["Cabin"] == "").sum() == 687
    names = train["Name"].tolist()
    assert 'McGowan, Miss. Anna "Annie"' in names
    assert "Hewlett, Mrs. (Mary D Kingcome) " in names  # trailing space kept
    with pytest.raises(KeyError, match="no column 'Nope'"):
        train["Nope"]


@needs_data
def test_load_from_env_var_test_facts(monkeypatch):
    monkeypatch.setenv("NNXLIKE_TITANIC_DIR", str(SHARED))
    test = load_titanic("test", download=False)
    assert test.path == SHARED / "test.csv"
    assert len(test) == 418 and "Survived" not in test.columns
    assert test["PassengerId"].tolist() == list(range(892, 1310))
    assert np.isnan(test["Age"]).sum() == 86
    assert np.isnan(test["Fare"]).sum() == 1
    assert (test["Cabin"] == "").sum() == 327
    assert (test["Embarked"] == "").sum() == 0


@needs_data
def test_local_crlf_file_reads_like_lf(tmp_path):
    (tmp_path / "train.csv").write_bytes(_raw("train").replace(b"\n", b"\r\n"))
    crlf = load_titanic("train", data_dir=tmp_path, download=False)
    lf = load_titanic("train", data_dir=SHARED, download=False)
    for col in lf.columns:
        np.testing.assert_array_equal(crlf[col], lf[col])


def test_search_order(tmp_path, monkeypatch, isolated):
    _tiny_test_csv(isolated, 4)
    assert load_titanic("test", download=False, verify=False)[
        "PassengerId"
    ].tolist() == [4]
    _tiny_test_csv(titanic_mod.KAGGLE_DIR, 3)
    assert load_titanic("test", download=False, verify=False)[
        "PassengerId"
    ].tolist() == [3]
    monkeypatch.setenv(
        "NNXLIKE_TITANIC_DIR", str(_tiny_test_csv(tmp_path / "e", 2).parent)
    )
    assert load_titanic("test", download=False, verify=False)[
        "PassengerId"
    ].tolist() == [2]
    got = load_titanic(
        "test", data_dir=_tiny_test_csv(tmp_path / "d", 1).parent, verify=False
    )
    assert got["PassengerId"].tolist() == [1] and got.path == tmp_path / "d/test.csv"


def test_local_file_with_wrong_header(tmp_path):
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")
    with pytest.raises(TitanicFormatError, match="lacks columns.*Survived"):
        load_titanic("train", data_dir=tmp_path, verify=False)


def test_ragged_row_and_bad_split(tmp_path):
    (tmp_path / "test.csv").write_text(f"{TINY_HEADER}\n1,2,3\n")
    with pytest.raises(TitanicFormatError, match="row 1 has 3 fields, expected 11"):
        load_titanic("test", data_dir=tmp_path, verify=False)
    with pytest.raises(ValueError, match="split must be one of"):
        load_titanic("validation")


def test_download_false_lists_every_place(tmp_path, monkeypatch, isolated):
    monkeypatch.setenv("NNXLIKE_TITANIC_DIR", str(tmp_path / "env-dir"))
    with pytest.raises(TitanicDataNotFoundError) as info:
        load_titanic("train", data_dir=tmp_path / "arg-dir", download=False)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in ("arg-dir", "env-dir", "no-kaggle", str(isolated)):
        assert place in msg
    assert "download=False" in msg
    assert (
        f"Put train.csv and test.csv (Kaggle 'titanic' competition) in {isolated}"
        in msg
    )
    assert "NNXLIKE_TITANIC_DIR=/path/to/dir" in msg
    assert not (tmp_path / "cache").exists()


def test_standalone_module_does_not_import_jax():
    path = titanic_mod.__file__
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('t', {path!r})\n"
        "mod = sys.modules['t'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "assert mod.extract_title('Braund, Mr. Owen Harris') == 'Mr'\n"
        "assert 'jax' not in sys.modules, 'jax imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------- downloading


@pytest.mark.parametrize("how", ["argument", "env", "module"])
def test_download_then_cache_hit(mirror, payload, monkeypatch, isolated, how):
    body = payload("train")
    mirror.serve("train", body)
    kwargs = {}
    if how == "argument":
        kwargs["url"] = mirror.url
    elif how == "env":
        monkeypatch.setenv("NNXLIKE_TITANIC_URL", mirror.url + "/")
    else:
        monkeypatch.setattr(titanic_mod, "TITANIC_URL", mirror.url)
    train = load_titanic("train", **kwargs)
    assert len(train) == body.count(b"\n") - 1 == (891 if SHARED else 1)
    assert train.path == isolated / "train.csv"
    assert _files_under(isolated.parent) == [isolated / "train.csv"]
    assert (isolated / "train.csv").read_bytes() == body
    assert _sha(body) == TITANIC_SHA256["train"]
    mirror.stop()  # the next load must come from the cache, with no network
    again = load_titanic("train", url=_dead_url())
    assert again.path == isolated / "train.csv"
    np.testing.assert_array_equal(again["Age"], train["Age"])


def test_download_crlf_stored_as_lf(mirror, payload, isolated):
    body = payload("test")
    crlf = body.replace(b"\n", b"\r\n")
    assert _sha(crlf) == TITANIC_SHA256_CRLF["test"]  # Kaggle's original bytes
    mirror.serve("test", crlf)
    test = load_titanic("test", url=mirror.url)
    assert len(test) == (418 if SHARED else 1)
    assert (isolated / "test.csv").read_bytes() == body
    assert _files_under(isolated.parent) == [isolated / "test.csv"]


def test_checksum_mismatch_leaves_nothing(mirror, payload, isolated):
    body = payload("train").replace(b"Braund", b"Brauns")
    mirror.serve("train", body)
    with pytest.raises(TitanicChecksumError) as info:
        load_titanic("train", url=mirror.url)
    msg = str(info.value)
    assert TITANIC_SHA256["train"] in msg
    assert _sha(body) in msg
    assert f"{mirror.url}/train.csv" in msg
    assert _files_under(isolated.parent.parent) == []


def test_truncated_transfer_leaves_nothing(mirror, payload, isolated):
    body = payload("train")
    mirror.serve("train", body, mode="truncate")
    with pytest.raises(TitanicChecksumError, match="truncated") as info:
        load_titanic("train", url=mirror.url)
    half = len(body) // 2
    assert f"expected {len(body)} bytes (Content-Length), got {half}" in str(info.value)
    if SHARED:
        assert len(body) == 60302
    assert _files_under(isolated.parent.parent) == []


def test_failed_cache_write_leaves_no_temp_file(mirror, payload, monkeypatch, isolated):
    mirror.serve("train", payload("train"))

    def broken_replace(src, dst):
        assert Path(src).parent == isolated and Path(src).read_bytes()  # temp exists
        raise OSError("disk full")

    monkeypatch.setattr(titanic_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        load_titanic("train", url=mirror.url)
    assert _files_under(isolated.parent) == []


def test_server_down_says_where_to_put_files(isolated):
    url = _dead_url()
    with pytest.raises(TitanicDataNotFoundError) as info:
        load_titanic("train", url=url)
    msg = str(info.value)
    assert f"Downloading {url}/train.csv failed" in msg
    assert "Put train.csv and test.csv" in msg and str(isolated) in msg
    assert "NNXLIKE_TITANIC_DIR=/path/to/dir" in msg
    assert _files_under(isolated.parent.parent) == []


def test_http_404_is_not_found(mirror, isolated):
    with pytest.raises(TitanicDataNotFoundError, match="404"):
        load_titanic("test", url=mirror.url)
    assert _files_under(isolated.parent.parent) == []


# --------------------------------------------------------------- preprocessing


@pytest.fixture
def splits():
    if SHARED is None:
        pytest.skip(NO_DATA)
    return (
        load_titanic("train", data_dir=SHARED, download=False),
        load_titanic("test", data_dir=SHARED, download=False),
    )


def test_classic_recipe(splits):
    train, test = splits
    x, y, xt = preprocess_classic(train, test)
    assert x.shape == (891, 7) and xt.shape == (418, 7) and y.shape == (891,)
    assert x.dtype == xt.dtype == y.dtype == np.float32
    assert not np.isnan(x).any() and not np.isnan(xt).any()
    np.testing.assert_array_equal(y, train["Survived"])
    age, fare = FEATURES_CLASSIC.index("Age"), FEATURES_CLASSIC.index("Fare")
    raw_age = train["Age"]
    train_median = np.median(raw_age[~np.isnan(raw_age)])
    test_median = np.median(test["Age"][~np.isnan(test["Age"])])
    assert train_median != test_median  # so the next checks can tell them apart
    assert np.all(x[np.isnan(raw_age), age] == np.float32(train_median))
    assert np.all(xt[np.isnan(test["Age"]), age] == np.float32(train_median))
    fare_median = np.median(train["Fare"])  # no Fare gaps in train
    assert xt[np.isnan(test["Fare"]), fare] == np.float32(fare_median)
    np.testing.assert_array_equal(x[:, 1], train["Sex"] == "female")
    emb = x[:, FEATURES_CLASSIC.index("Embarked")]
    assert np.all(emb[train["Embarked"] == ""] == 0)  # mode S
    assert np.all(emb[train["Embarked"] == "Q"] == 2)
    assert preprocess_classic(train)[2] is None


def test_improved_recipe(splits):
    train, test = splits
    x, y, xt, names = preprocess_improved(train, test)
    assert x.shape == (891, N_FEATURES_IMPROVED) == (891, 19)
    assert xt.shape == (418, 19) and len(names) == x.shape[1]
    assert not np.isnan(x).any() and not np.isnan(xt).any()
    assert not any("passenger" in n.lower() for n in names)
    std_cols = [names.index(n) for n in Preprocessor.NUMERIC]
    np.testing.assert_allclose(x[:, std_cols].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x[:, std_cols].std(0), 1, atol=1e-4)
    for prefix in ("pclass_", "sex_", "embarked_", "title_"):
        group = [i for i, n in enumerate(names) if n.startswith(prefix)]
        assert np.all(x[:, group].sum(1) == 1) and np.all(xt[:, group].sum(1) == 1)
    missing = names.index("age_missing")
    np.testing.assert_array_equal(x[:, missing], np.isnan(train["Age"]))
    # the test split uses train statistics: its filled ages map to the train median
    ages = train["Age"][~np.isnan(train["Age"])]
    filled = np.concatenate([ages, np.full(177, np.median(ages))])
    expect = (np.median(ages) - filled.mean()) / filled.std()
    np.testing.assert_allclose(xt[np.isnan(test["Age"]), names.index("age")], expect)
    assert preprocess_improved(train, use_title=False)[0].shape == (891, 14)


def test_improved_ignores_passenger_id(splits):
    train, _ = splits
    shuffled = dict(train.data)
    shuffled["PassengerId"] = train["PassengerId"][::-1].copy()
    other = TitanicData(train.split, train.columns, shuffled)
    x1 = preprocess_improved(train)[0]
    x2 = preprocess_improved(other)[0]
    np.testing.assert_array_equal(x1, x2)


def test_unknown_category_raises():
    cols = ["Survived", "Pclass", "Sex", "Age", "SibSp", "Parch", "Fare", "Embarked"]
    bad = TitanicData.from_rows(cols, [["0", "3", "robot", "1", "0", "0", "1", "S"]])
    with pytest.raises(ValueError, match="'Sex': unexpected value 'robot'"):
        preprocess_classic(bad)


def test_train_val_split():
    x, y = np.arange(100).reshape(50, 2), np.arange(50)
    a = train_val_split(x, y, val_fraction=0.2, seed=3)
    b = train_val_split(x, y, val_fraction=0.2, seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    xt, yt, xv, yv = a
    assert len(yv) == 10 and len(yt) == 40
    assert set(yt.tolist()).isdisjoint(yv.tolist())
    assert sorted(yt.tolist() + yv.tolist()) == list(range(50))
    np.testing.assert_array_equal(xt[:, 0], 2 * yt)  # rows stay paired
    assert yt.tolist() != sorted(yt.tolist())  # shuffled
    c = train_val_split(x, y, seed=4)
    assert c[3].tolist() != yv.tolist()
    with pytest.raises(ValueError, match="lengths differ"):
        train_val_split(x, y[:-1])


def test_download_removes_part_files_of_killed_downloads(mirror, payload, isolated):
    isolated.mkdir(parents=True)
    stale = isolated / ".train.csv.abc123.part"
    fresh = isolated / ".train.csv.def456.part"
    for p in (stale, fresh):
        p.write_bytes(b"partial")
    hour_ago = os.path.getmtime(stale) - 3601
    os.utime(stale, (hour_ago, hour_ago))
    mirror.serve("train", payload("train"))
    load_titanic("train", url=mirror.url)
    assert not stale.exists() and fresh.exists()  # a live download is left alone
