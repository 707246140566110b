"""Kaggle Titanic data: find, download, verify, parse and preprocess (numpy only).

Design note: this module owns the Titanic CSV files end to end: where they are looked
for (argument, ``NNXLIKE_TITANIC_DIR``, Kaggle's input folder, the user cache), how
they are fetched (pinned mirror, SHA-256 checked, atomic write into the cache), how
they are parsed (``csv`` module into one numpy array per column) and two feature
recipes. Invariants: the cache never holds a partial or unverified file; every read
checks the SHA-256 of the bytes it parses (the files are 60 KB: verifying costs
nothing, and an edited, cut or duplicated row never loads silently) unless the
caller says ``verify=False`` for a copy they edited on purpose; a download has a
total deadline and a size cap, whatever the server does; every preprocessing
statistic is fitted on the train split only. It deliberately imports neither jax
nor pandas and does no model training.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import os
import socket
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TITANIC_SHA256 = {
    "train": "4a437fde05fe5264e1701a7387ac6fb75393772ba38bb2c9c566405af5af4bd7",
    "test": "5c78320a80dc159b35c408363be46a5d93f078183d539db75ee42a796d6a4e95",
}
"""SHA-256 of the LF files, as stored in the cache."""
TITANIC_SHA256_CRLF = {
    "train": "7d118fef8b6ccf7f81111877bc388536f7b1e498a655e3d649d19aaa010e9f6f",
    "test": "56023b9948236f3c7a1c9448fcf418b283e109ef177fa8c7e069158dd7dd52b2",
}
"""SHA-256 of Kaggle's CRLF originals; accepted on download, stored as LF."""
TITANIC_URL = (
    "https://raw.githubusercontent.com/agconti/kaggle-titanic/"
    "a7bbe5952178c669bf0c0d590b72036c0174c19f/data"
)
"""Default mirror base URL; the file URL is ``base + "/" + split + ".csv"``."""
KAGGLE_DIR = Path("/kaggle/input/titanic")
DOWNLOAD_TIMEOUT = 30.0
"""Seconds one network read may wait (the socket timeout)."""
DOWNLOAD_DEADLINE = 120.0
"""Seconds a whole download may take, connection to last byte."""
MAX_DOWNLOAD_BYTES = 2**20
"""Largest answer accepted (the files are 61 KB and 28 KB); more is not Titanic."""
MAX_LOCAL_BYTES = 64 * 2**20
"""Largest local file read with ``verify=False``."""

TEST_COLUMNS = ("PassengerId", "Pclass", "Name", "Sex", "Age", "SibSp", "Parch")
TEST_COLUMNS += ("Ticket", "Fare", "Cabin", "Embarked")
TRAIN_COLUMNS = TEST_COLUMNS[:1] + ("Survived",) + TEST_COLUMNS[1:]
_INT_COLUMNS = ("PassengerId", "Survived", "Pclass", "SibSp", "Parch")
_FLOAT_COLUMNS = ("Age", "Fare")
_SPLITS = ("train", "test")


class TitanicDataNotFoundError(FileNotFoundError):
    """The CSV file is nowhere to be found and could not be downloaded."""


class TitanicChecksumError(ValueError):
    """A downloaded or local file is not Kaggle's (SHA-256 mismatch, too large)."""


class TitanicTruncatedError(TitanicChecksumError):
    """The transfer ended before all announced bytes arrived."""


class TitanicFormatError(ValueError):
    """A CSV file does not have the expected header or row shape."""


@dataclass(frozen=True, eq=False)
class TitanicData:
    """One split of the Titanic data, column-wise.

    Attributes:
        split: ``"train"`` or ``"test"``.
        columns: the CSV header, in file order.
        data: one array per column. Integer columns without gaps are int64, other
            numeric columns float64 with NaN for missing, text columns object
            arrays of ``str`` with ``""`` for missing.
        path: the file read, or ``None`` for data built in memory.
    """

    split: str
    columns: tuple[str, ...]
    data: Mapping[str, np.ndarray] = field(repr=False)
    path: Path | None = None

    def __post_init__(self) -> None:
        if set(self.columns) != set(self.data):
            raise ValueError(f"columns {self.columns} do not match the data keys")
        if len({len(v) for v in self.data.values()}) > 1:
            raise ValueError("all columns must have the same length")

    @classmethod
    def from_rows(
        cls,
        columns: Sequence[str],
        rows: Sequence[Sequence[str]],
        split: str = "train",
        path: Path | None = None,
    ) -> TitanicData:
        """Build from header and string rows, converting as :func:`load_titanic`.

        >>> d = TitanicData.from_rows(["PassengerId", "Age"], [["1", "22"], ["2", ""]])
        >>> len(d), d["PassengerId"].dtype, d["Age"]
        (2, dtype('int64'), array([22., nan]))
        """
        columns = tuple(columns)
        for i, row in enumerate(rows):
            if len(row) != len(columns):
                raise TitanicFormatError(
                    f"{path or 'row data'}: data row {i + 1} has {len(row)} fields, "
                    f"expected {len(columns)}"
                )
        data = {c: _convert(c, [r[j] for r in rows]) for j, c in enumerate(columns)}
        return cls(split=split, columns=columns, data=data, path=path)

    def __len__(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in self.data:
            raise KeyError(f"no column {column!r}; columns are {self.columns}")
        return self.data[column]


def _convert(column: str, values: list[str]) -> np.ndarray:
    if column not in _INT_COLUMNS + _FLOAT_COLUMNS:
        return np.array(values, dtype=object)
    try:
        if column in _INT_COLUMNS and all(values):
            return np.array([int(v) for v in values], dtype=np.int64)
        return np.array([float(v) if v else np.nan for v in values], np.float64)
    except ValueError as e:
        raise TitanicFormatError(f"column {column!r}: non-numeric value ({e})") from e


def _read_bytes(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file (a FIFO would block ``open``)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TitanicFormatError(f"{path} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TitanicFormatError(
            f"{path} is larger than {limit} bytes: not a Titanic CSV file"
        )
    return data


def _check_local(path: Path, split: str, data: bytes) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got in (TITANIC_SHA256[split], TITANIC_SHA256_CRLF[split]):
        return
    raise TitanicChecksumError(
        f"{path} is not Kaggle's {split}.csv: its SHA-256 is {got} ({len(data)} "
        f"bytes), expected {TITANIC_SHA256[split]} (or, with CRLF line ends, "
        f"{TITANIC_SHA256_CRLF[split]}). It was edited, cut short or damaged. "
        "Delete it to download it again (or put Kaggle's file there), or, for a "
        "copy you changed on purpose, pass `load_titanic(..., verify=False)`."
    )


def _parse(path: Path, split: str, data: bytes) -> TitanicData:
    try:
        text = data.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except UnicodeDecodeError as e:
        raise TitanicFormatError(
            f"{path} is not a UTF-8 text file (byte {e.start}: {e.reason}); it is "
            "not a Titanic CSV file. Delete it, or point at Kaggle's file."
        ) from None
    except csv.Error as e:
        raise TitanicFormatError(f"{path} is not a readable CSV file ({e})") from None
    header = tuple(rows[0]) if rows else ()
    expected = TRAIN_COLUMNS if split == "train" else TEST_COLUMNS
    missing = [c for c in expected if c not in header]
    if missing:
        raise TitanicFormatError(
            f"{path} is not a Titanic {split}.csv: header {header} lacks "
            f"columns {missing}; expected {expected}"
        )
    return TitanicData.from_rows(header, rows[1:], split=split, path=path)


def read_titanic_csv(
    path: str | os.PathLike, split: str, *, verify: bool = False
) -> TitanicData:
    """Parse one Titanic CSV file (LF or CRLF) and check its header.

    With ``verify=True`` the bytes must be Kaggle's file (SHA-256); the bytes
    checked are the bytes parsed.
    """
    path = Path(path)
    data = _read_bytes(path, MAX_LOCAL_BYTES)
    if verify:
        _check_local(path, split, data)
    return _parse(path, split, data)


def cache_dir() -> Path:
    """Return the cache folder: ``$NNXLIKE_CACHE_DIR/titanic``, else
    ``$XDG_CACHE_HOME/nnxlike/titanic``, else ``~/.cache/nnxlike/titanic``."""
    if os.environ.get("NNXLIKE_CACHE_DIR"):
        return Path(os.environ["NNXLIKE_CACHE_DIR"]).expanduser() / "titanic"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "nnxlike" / "titanic"


def _fetch(url: str, timeout: float, deadline: float) -> bytes:
    """GET ``url`` within ``deadline`` seconds in all and ``MAX_DOWNLOAD_BYTES``.

    ``timeout`` bounds each network wait; a server that sends a byte now and
    then would defeat it alone, so a watchdog shuts the connection down when
    the deadline passes. The body is read in bounded chunks and counted, so a
    huge or endless answer stops at the cap. Raises ``TimeoutError`` past the
    deadline, :class:`TitanicChecksumError` past the cap and
    :class:`TitanicTruncatedError` on a body shorter than its Content-Length.
    """
    sockets: list = []
    lock = threading.Lock()
    expired = threading.Event()

    def shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
        except OSError:
            pass

    def fire() -> None:
        with lock:
            expired.set()
            for sock in sockets:
                shut(sock)

    def watched(base: type) -> type:
        class Connection(base):
            def connect(self) -> None:
                super().connect()
                with lock:
                    sockets.append(self.sock)
                    if expired.is_set():
                        shut(self.sock)

        return Connection

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(watched(http.client.HTTPConnection), req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            kw = {"context": self._context}
            if hasattr(self, "_check_hostname"):  # Python < 3.12
                kw["check_hostname"] = self._check_hostname
            return self.do_open(watched(http.client.HTTPSConnection), req, **kw)

    opener = urllib.request.build_opener(HTTP, HTTPS)
    end = time.monotonic() + deadline
    watchdog = threading.Timer(deadline, fire)
    watchdog.daemon = True
    watchdog.start()
    chunks, got, want = [], 0, None

    def too_late() -> TimeoutError:
        return TimeoutError(
            f"the download of {url} did not finish within its {deadline:g} s "
            f"deadline ({got} bytes received); the server is too slow or stalls. "
            "Try again later, or pass deadline=... to wait longer"
        )

    try:
        with opener.open(url, timeout=min(timeout, deadline)) as resp:
            length = resp.headers.get("Content-Length", "")
            want = int(length) if length.isdigit() else None
            if want is not None and want > MAX_DOWNLOAD_BYTES:
                raise TitanicChecksumError(
                    f"{url} announces {want} bytes (Content-Length), more than "
                    f"the {MAX_DOWNLOAD_BYTES} bytes any Titanic file has: it is "
                    "not the Titanic data; nothing was read. Check the URL."
                )
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                got += len(chunk)
                if got > MAX_DOWNLOAD_BYTES:
                    raise TitanicChecksumError(
                        f"{url} sent more than {MAX_DOWNLOAD_BYTES} bytes, more "
                        "than any Titanic file has: it is not the Titanic data; "
                        "the download was stopped. Check the URL."
                    )
                chunks.append(chunk)
                if time.monotonic() > end:
                    raise too_late()
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise too_late() from None
        raise
    finally:
        watchdog.cancel()
    if expired.is_set():  # a shut-down socket reads as a clean end
        raise too_late()
    if want is not None and got != want:
        raise TitanicTruncatedError(
            f"truncated/incomplete download from {url}: expected {want} bytes "
            f"(Content-Length), got {got}"
        )
    return b"".join(chunks)


def _verify(split: str, url: str, body: bytes) -> bytes:
    """Return the LF bytes if ``body`` has a known hash, else raise."""
    got = hashlib.sha256(body).hexdigest()
    if got == TITANIC_SHA256_CRLF[split]:
        body = body.replace(b"\r\n", b"\n")
        got = hashlib.sha256(body).hexdigest()
    if got != TITANIC_SHA256[split]:
        raise TitanicChecksumError(
            f"checksum mismatch for {url}: expected sha256 {TITANIC_SHA256[split]} "
            f"(or CRLF {TITANIC_SHA256_CRLF[split]}), got {got} ({len(body)} bytes)"
        )
    return body


def _write_atomic(dest: Path, payload: bytes) -> None:
    """Write via a fsynced temp file in the same folder and ``os.replace``.

    Same protocol as ``nnxlike._atomic.atomic_write``, restated here because this
    file stays standalone (no nnxlike or jax import; it can be copied to Kaggle).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in dest.parent.glob(f".{dest.name}.*.part"):  # left by killed writers
        try:  # a download lasts DOWNLOAD_DEADLINE at most: an hour-old one is dead
            if time.time() - old.stat().st_mtime > 3600:
                old.unlink()
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_titanic(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    url: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT,
    deadline: float = DOWNLOAD_DEADLINE,
    verify: bool = True,
) -> TitanicData:
    """Load the Kaggle Titanic ``train`` or ``test`` split.

    ``<dir>/<split>.csv`` is looked for in ``data_dir``, ``$NNXLIKE_TITANIC_DIR``,
    :data:`KAGGLE_DIR` and :func:`cache_dir`, in that order. A file found there
    must be Kaggle's (SHA-256 :data:`TITANIC_SHA256`, or the CRLF variant),
    checked on every read, unless ``verify=False``. Otherwise, if ``download``,
    the file is fetched from ``url`` (else ``$NNXLIKE_TITANIC_URL``, else
    :data:`TITANIC_URL`) within ``deadline`` seconds and
    :data:`MAX_DOWNLOAD_BYTES`, verified (CRLF variants accepted and stored as
    LF) and written atomically into the cache.

    Args:
        split: ``"train"`` (891 rows) or ``"test"`` (418 rows, no ``Survived``).
        data_dir: a folder to look in first.
        download: whether to download when no local copy is found.
        url: mirror base URL overriding the environment and the default.
        timeout: socket timeout in seconds for each network wait.
        deadline: seconds the whole download may take.
        verify: check that a local file is Kaggle's before parsing it; pass
            ``False`` to read a copy you edited on purpose (downloads are always
            verified).

    Returns:
        The parsed split.

    Raises:
        TitanicDataNotFoundError: no local file and no successful download.
        TitanicChecksumError: a local file or downloaded bytes have an unknown
            SHA-256 (a :class:`TitanicTruncatedError` when the transfer was cut
            short), or the answer was larger than :data:`MAX_DOWNLOAD_BYTES`.
        TitanicFormatError: a local file (``verify=False``) is not UTF-8 text or
            lacks the expected columns.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = pathlib.Path(tmp, "test.csv").write_text(
    ...         ",".join(TEST_COLUMNS) + '\\n892,3,"Kelly, Mr. James",male,34.5,'
    ...         "0,0,330911,7.8292,,Q\\n")
    ...     d = load_titanic("test", data_dir=tmp, download=False, verify=False)
    >>> len(d), d["Name"][0], d["Age"].tolist(), d["Cabin"][0]
    (1, 'Kelly, Mr. James', [34.5], '')
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    fname = f"{split}.csv"
    candidates = [
        ("data_dir argument", data_dir),
        ("$NNXLIKE_TITANIC_DIR", os.environ.get("NNXLIKE_TITANIC_DIR")),
        ("Kaggle input folder", KAGGLE_DIR),
        ("user cache", cache_dir()),
    ]
    places = [(label, Path(d).expanduser()) for label, d in candidates if d]
    for _, folder in places:
        if (folder / fname).is_file():
            return read_titanic_csv(folder / fname, split, verify=verify)

    cache = cache_dir()
    if not download:
        why = "download=False, so nothing was downloaded."
    else:
        base = url or os.environ.get("NNXLIKE_TITANIC_URL") or TITANIC_URL
        file_url = base.rstrip("/") + "/" + fname
        try:
            body = _verify(split, file_url, _fetch(file_url, timeout, deadline))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            if isinstance(e, urllib.error.HTTPError):
                e.close()
            why = f"Downloading {file_url} failed: {e!r}."
        else:
            _write_atomic(cache / fname, body)
            return _parse(cache / fname, split, body)  # the bytes verified
    searched = "\n".join(f"  - {label}: {folder / fname}" for label, folder in places)
    raise TitanicDataNotFoundError(
        f"Titanic {fname} not found. Searched:\n{searched}\n{why}\n"
        f"Put train.csv and test.csv (Kaggle 'titanic' competition) in {cache} "
        "or set NNXLIKE_TITANIC_DIR=/path/to/dir (or pass data_dir=...)."
    )


FEATURES_CLASSIC = ("Pclass", "Sex", "Age", "SibSp", "Parch", "Fare", "Embarked")
_SEX = ("male", "female")
_EMBARKED = ("S", "C", "Q")
_PCLASS = (1, 2, 3)
TITLES = ("Mr", "Mrs", "Miss", "Master", "Rare")
_TITLE_ALIASES = {"Mme": "Mrs", "Mlle": "Miss", "Ms": "Miss"}


def _median(values: np.ndarray, name: str) -> float:
    values = np.asarray(values, np.float64)
    present = values[~np.isnan(values)]
    if present.size == 0:
        raise ValueError(f"train column {name!r} has no values to take a median of")
    return float(np.median(present))


def _codes(values: np.ndarray, levels: Sequence, name: str, fill=None) -> np.ndarray:
    """Index of each value in ``levels``; ``""`` becomes ``fill``; unknown raises."""
    index = {v: i for i, v in enumerate(levels)}
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values.tolist()):
        v = fill if v == "" and fill is not None else v
        if v not in index:
            raise ValueError(f"column {name!r}: unexpected value {v!r}; known {levels}")
        out[i] = index[v]
    return out


def _mode(values: np.ndarray, levels: Sequence[str]) -> str:
    counts = [int(np.sum(values == v)) for v in levels]
    return levels[int(np.argmax(counts))]  # ties resolve to the earlier level


def _labels(train: TitanicData) -> np.ndarray:
    if "Survived" not in train.columns:
        raise ValueError(f"the {train.split!r} split has no 'Survived' column")
    return np.asarray(train["Survived"], np.float32)


def preprocess_classic(
    train: TitanicData, other: TitanicData | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Classic tutorial recipe on :data:`FEATURES_CLASSIC`, fitted on ``train``.

    Age and Fare gaps take the train median; Sex is coded male=0, female=1;
    Embarked S=0, C=1, Q=2 with gaps set to the train mode.

    Args:
        train: split with ``Survived``; all statistics come from it.
        other: optional split (e.g. test) transformed with train statistics.

    Returns:
        ``(x_train, y_train, x_other)``: float32 arrays of shapes ``(n, 7)``,
        ``(n,)`` and ``(m, 7)``; ``x_other`` is ``None`` without ``other``.

    >>> cols = ["Survived", "Pclass", "Sex", "Age", "SibSp", "Parch", "Fare",
    ...         "Embarked"]
    >>> tr = TitanicData.from_rows(cols, [["0", "3", "male", "20", "1", "0", "7", "S"],
    ...     ["1", "1", "female", "", "0", "0", "70", "C"],
    ...     ["1", "2", "female", "40", "0", "2", "20", ""]])
    >>> x, y, _ = preprocess_classic(tr)
    >>> x[1].tolist()  # Age gap -> train median 30; Embarked C -> 1
    [1.0, 1.0, 30.0, 0.0, 0.0, 70.0, 1.0]
    >>> x[2, 6].item(), y.tolist()  # Embarked gap -> train mode S -> 0
    (0.0, [0.0, 1.0, 1.0])
    """
    age = _median(train["Age"], "Age")
    fare = _median(train["Fare"], "Fare")
    port = _mode(train["Embarked"], _EMBARKED)

    def transform(d: TitanicData) -> np.ndarray:
        cols = [
            np.asarray(d["Pclass"], np.float64),
            _codes(d["Sex"], _SEX, "Sex"),
            np.nan_to_num(np.asarray(d["Age"], np.float64), nan=age),
            np.asarray(d["SibSp"], np.float64),
            np.asarray(d["Parch"], np.float64),
            np.nan_to_num(np.asarray(d["Fare"], np.float64), nan=fare),
            _codes(d["Embarked"], _EMBARKED, "Embarked", fill=port),
        ]
        return np.stack(cols, axis=1).astype(np.float32)

    x_other = None if other is None else transform(other)
    return transform(train), _labels(train), x_other


def extract_title(name: str) -> str:
    """Map a passenger name to one of :data:`TITLES`.

    >>> extract_title("Braund, Mr. Owen Harris"), extract_title("Byles, Rev. Thomas")
    ('Mr', 'Rare')
    """
    title = name.partition(",")[2].partition(".")[0].strip()
    title = _TITLE_ALIASES.get(title, title)
    return title if title in TITLES else "Rare"


class Preprocessor:
    """Improved recipe: standardised numerics plus one-hot categories.

    Features, in order (:data:`N_FEATURES_IMPROVED` = 19 with titles, 14 without):
    standardised ``age`` (median-filled), ``sibsp``, ``parch``, ``log_fare``
    (``log1p`` of median-filled Fare), ``family_size`` (SibSp + Parch + 1); the 0/1
    ``age_missing`` indicator; one-hot ``pclass_1..3``, ``sex_male/female``,
    ``embarked_S/C/Q`` (gaps: train mode) and ``title_*`` over :data:`TITLES`.
    Every statistic is fitted on the train split; PassengerId is never used.

    >>> tr = TitanicData.from_rows(["Pclass", "Name", "Sex", "Age", "SibSp", "Parch",
    ...     "Fare", "Embarked"], [["3", "A, Mr. B", "male", "", "1", "0", "7", "S"],
    ...     ["1", "C, Mrs. D", "female", "40", "0", "0", "70", "C"]])
    >>> p = Preprocessor().fit(tr)
    >>> x = p.transform(tr)
    >>> x.shape, len(p.feature_names), p.feature_names[5], x[:, 5]
    ((2, 19), 19, 'age_missing', array([1., 0.], dtype=float32))
    """

    NUMERIC = ("age", "sibsp", "parch", "log_fare", "family_size")

    def __init__(self, use_title: bool = True) -> None:
        self.use_title = use_title
        self.stats: dict[str, float | str] | None = None
        self.mean = self.std = np.zeros(len(self.NUMERIC))
        groups = {"pclass": _PCLASS, "sex": _SEX, "embarked": _EMBARKED}
        if use_title:
            groups["title"] = TITLES
        self.feature_names: tuple[str, ...] = self.NUMERIC + ("age_missing",)
        self.feature_names += tuple(f"{g}_{v}" for g, vs in groups.items() for v in vs)

    def _numeric(self, d: TitanicData) -> np.ndarray:
        age = np.asarray(d["Age"], np.float64)
        sibsp = np.asarray(d["SibSp"], np.float64)
        parch = np.asarray(d["Parch"], np.float64)
        fare = np.nan_to_num(np.asarray(d["Fare"], np.float64), nan=self.stats["fare"])
        age = np.nan_to_num(age, nan=self.stats["age"])
        return np.stack([age, sibsp, parch, np.log1p(fare), sibsp + parch + 1], 1)

    def fit(self, train: TitanicData) -> Preprocessor:
        """Fit medians, the Embarked mode and means/stds on ``train``."""
        self.stats = {
            "age": _median(train["Age"], "Age"),
            "fare": _median(train["Fare"], "Fare"),
            "port": _mode(train["Embarked"], _EMBARKED),
        }
        num = self._numeric(train)
        self.mean, std = num.mean(axis=0), num.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        return self

    def transform(self, d: TitanicData) -> np.ndarray:
        """Return the ``(len(d), len(feature_names))`` float32 feature matrix."""
        if self.stats is None:
            raise RuntimeError("call fit(train) before transform")
        eye = np.eye(max(len(_PCLASS), len(TITLES)))
        parts = [
            (self._numeric(d) - self.mean) / self.std,
            np.isnan(np.asarray(d["Age"], np.float64))[:, None],
            eye[_codes(d["Pclass"], _PCLASS, "Pclass"), : len(_PCLASS)],
            eye[_codes(d["Sex"], _SEX, "Sex"), : len(_SEX)],
            eye[_codes(d["Embarked"], _EMBARKED, "Embarked", self.stats["port"]), :3],
        ]
        if self.use_title:
            titles = np.array([extract_title(n) for n in d["Name"].tolist()], object)
            parts.append(eye[_codes(titles, TITLES, "title"), : len(TITLES)])
        return np.concatenate(parts, axis=1).astype(np.float32)


N_FEATURES_IMPROVED = len(Preprocessor().feature_names)


def preprocess_improved(
    train: TitanicData, other: TitanicData | None = None, use_title: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Fit :class:`Preprocessor` on ``train`` and transform both splits.

    Returns:
        ``(x_train, y_train, x_other, feature_names)``; ``x_other`` is ``None``
        without ``other``. ``x`` has :data:`N_FEATURES_IMPROVED` (19) columns, or
        14 with ``use_title=False``.
    """
    prep = Preprocessor(use_title=use_title).fit(train)
    x_other = None if other is None else prep.transform(other)
    return prep.transform(train), _labels(train), x_other, prep.feature_names


def train_val_split(
    x: np.ndarray, y: np.ndarray, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic shuffled split with ``numpy.random.default_rng(seed)``.

    Returns:
        ``(x_train, y_train, x_val, y_val)``; the validation part has
        ``round(len(x) * val_fraction)`` rows.

    >>> xt, yt, xv, yv = train_val_split(np.arange(10), np.arange(10), 0.3, seed=1)
    >>> len(xt), len(xv), sorted(np.concatenate([xt, xv]).tolist()) == list(range(10))
    (7, 3, True)
    """
    if len(x) != len(y):
        raise ValueError(f"x and y lengths differ: {len(x)} != {len(y)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * val_fraction))
    val, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], x[val], y[val]
