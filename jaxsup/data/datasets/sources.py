"""Open a TFDS split as a random-access data source; never downloads.

- Local datasets registered with `registry.register("dataset", name)` (e.g.
  "digits", which ships inside scikit-learn) are prepared on first use into
  `$JAXSUP_DATA_DIR` (default `~/.cache/jaxsup/tfds`).
- Any other name is a TFDS dataset already prepared under `data_dir` (config
  `data.data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
  array_record datasets are read with `tfds` data sources; tfrecord ones need
  the TensorFlow extra and are read into memory through tf.data.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import tensorflow_datasets as tfds

from jaxsup import registry
from jaxsup.data.datasets import digits
from jaxsup.errors import DataError

log = logging.getLogger("jaxsup")


class DatasetNotFoundError(DataError):
    """The dataset (or split) is not prepared where jaxsup looked for it."""


@registry.register("dataset", "digits")
def prepare_digits(data_dir: str) -> tfds.core.DatasetBuilder:
    return digits.prepare(data_dir)


def local_data_dir() -> str:
    return os.environ.get("JAXSUP_DATA_DIR") or os.path.expanduser("~/.cache/jaxsup/tfds")


def tfds_data_dir(configured: str | None = None) -> str:
    return configured or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _local_builders() -> Sequence[str]:
    return registry.names("dataset")


def _missing_hint(name: str, root: str) -> str:
    return (
        f"jaxsup never downloads at run time: prepare it first with TFDS, which needs TensorFlow "
        f"(`pip install 'jaxsup[tf]'`, then `tfds build {name} --data_dir={root} --file_format=array_record`; "
        f"ImageNet also needs `--manual_dir` with the ILSVRC2012 tars), or convert your own files without "
        f"TensorFlow (`python -m jaxsup.data.convert webdataset|table|folder INPUT --out DIR`, then "
        f"config.data.path=DIR); or set TFDS_DATA_DIR / config.data.data_dir to where it is."
    )


def prepared_tfds_builder(name: str, root: str) -> tfds.core.DatasetBuilder:
    """The builder of a dataset already prepared under `root`; never creates or downloads."""
    if not os.path.isdir(os.path.join(root, name.split(":")[0].split("/")[0])):
        raise DatasetNotFoundError(f"Dataset {name!r} not found in {root!r}. {_missing_hint(name, root)}")
    try:
        builder = tfds.builder(name, data_dir=root, try_gcs=False)
    except Exception as err:  # tfds raises several types for unknown names/versions.
        raise DatasetNotFoundError(
            f"Dataset {name!r} cannot be opened from {root!r}: {err}. {_missing_hint(name, root)}"
        ) from err
    if not builder.is_prepared():
        raise DatasetNotFoundError(f"Dataset {name!r} is not prepared in {root!r}. {_missing_hint(name, root)}")
    return builder


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """A prepared builder for `name`, or DatasetNotFoundError naming where it looked."""
    if name in _local_builders():
        return registry.get("dataset", name)(local_data_dir())
    return prepared_tfds_builder(name, tfds_data_dir(data_dir))


def _check_split(builder: tfds.core.DatasetBuilder, split: str) -> None:
    base = split.split("[")[0]
    if base not in builder.info.splits:
        raise DatasetNotFoundError(
            f"Dataset {builder.name!r} has no split {base!r}; splits: {sorted(builder.info.splits)}."
        )


def _in_memory_via_tf(builder: tfds.core.DatasetBuilder, split: str) -> list[dict[str, Any]]:
    try:
        import tensorflow  # noqa: F401
    except ImportError as err:
        raise DatasetNotFoundError(
            f"Dataset {builder.name!r} is stored as tfrecord, which needs TensorFlow: "
            "`pip install 'jaxsup[tf]'`, or convert it once to array_record with "
            f"`tfds convert_format --dataset_version_dir={builder.data_dir} --out_file_format=array_record`."
        ) from err
    log.warning("Reading tfrecord dataset %s[%s] into memory via tf.data.", builder.name, split)
    return list(tfds.as_numpy(builder.as_dataset(split=split)))


def open_source(name: str, split: str, data_dir: str | None = None) -> Any:
    """A random-access source (len, __getitem__) of example dicts of NumPy arrays."""
    builder = get_builder(name, data_dir)
    _check_split(builder, split)
    file_format = getattr(builder.info, "file_format", None)
    if file_format is not None and "tfrecord" in str(file_format).lower():
        return _in_memory_via_tf(builder, split)
    return builder.as_data_source(split=split)


def dataset_info(name: str, data_dir: str | None = None) -> tfds.core.DatasetInfo:
    return get_builder(name, data_dir).info
