"""One dynamic partition per batch: a fixed list of source files opened by `medvec ingest` or a sensor."""

import dagster as dg

batch_partitions = dg.DynamicPartitionsDefinition(name="batch")
