"""The data stages after generation (rules/dataset.smk): import, merge, clean, the dataset card, figures.

- `records`: the record format and reading data files; `importing`: Tianji-format data as a raw shard;
- `merge`: shards into merged.json; `clean`: the cleaning stage, over `rules` (one record at a time) and
  `dedup` (exact and near duplicates); `card`: the dataset card; `figures`: the dataset's figures.
"""
