"""One dynamic partition per batch: a fixed list of source files opened by `medvec ingest` or a sensor."""

import warnings

import dagster as dg

batch_partitions = dg.DynamicPartitionsDefinition(name="batch")

# A deliberate choice, not an oversight: `BackfillPolicy` is beta in Dagster 1.13 and we keep it on the
# embedding assets, because a backfill that loads the model once per 8 batches instead of once per batch
# is what the GPU pool is for (DESIGN.md, "Backfills run several batches per run"). Dagster warns about
# the beta parameter each time an asset uses it; exactly that warning is silenced here, where the
# partitions the policy groups are defined and before any asset module applies it.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message="Parameter `backfill_policy` of function `asset`")
