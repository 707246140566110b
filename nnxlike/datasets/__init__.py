"""Datasets for examples and tutorials (numpy only, no jax import)."""

from .titanic import FEATURES_CLASSIC as FEATURES_CLASSIC
from .titanic import N_FEATURES_IMPROVED as N_FEATURES_IMPROVED
from .titanic import TITANIC_SHA256 as TITANIC_SHA256
from .titanic import TITANIC_SHA256_CRLF as TITANIC_SHA256_CRLF
from .titanic import Preprocessor as Preprocessor
from .titanic import TitanicChecksumError as TitanicChecksumError
from .titanic import TitanicData as TitanicData
from .titanic import (
    TitanicDataNotFoundError as TitanicDataNotFoundError,
)
from .titanic import TitanicFormatError as TitanicFormatError
from .titanic import TitanicTruncatedError as TitanicTruncatedError
from .titanic import load_titanic as load_titanic
from .titanic import preprocess_classic as preprocess_classic
from .titanic import preprocess_improved as preprocess_improved
from .titanic import train_val_split as train_val_split
