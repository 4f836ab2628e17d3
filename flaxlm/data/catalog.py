"""The TFDS catalog: a registered dataset's builder by name (with close matches when the name
is wrong) and a check of its features, without downloading anything. Below both readers
(`sources` for pretraining text, `formats` for fine-tuning records), which ask it."""

from __future__ import annotations

import difflib

import tensorflow_datasets as tfds

from flaxlm.errors import ConfigError, DataNotFoundError


def tfds_builder(name: str, data_dir: str):
  known = tfds.list_builders(with_community_datasets=False)  # the community list needs TF
  try:
    if name.split("/")[0].split(":")[0] not in known:
      raise tfds.core.registered.DatasetNotFoundError(name)
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(name.split("/")[0], known, n=3)
    raise DataNotFoundError(
      f"no TFDS dataset {name!r}"
      + (f" (similar: {', '.join(close)})" if close else "")
      + "; see https://www.tensorflow.org/datasets/catalog"
    ) from None


def check_features(spec: str, builder, text_feature: str) -> None:
  try:
    features = set(builder.info.features.keys())
  except Exception:  # noqa: BLE001 - no metadata offline: checked when records are read
    return
  missing = [f for f in text_feature.split(",") if f not in features]
  if missing:
    raise ConfigError(
      f"config.text_feature={text_feature!r}: {spec} has no feature {missing[0]!r}; "
      f"its features are {sorted(features)}"
    )
