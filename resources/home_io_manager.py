"""Asset values kept in the Medvec home, so a step in another process, machine or Kubernetes pod reads what
the step before it wrote (Dagster's default IO manager keeps them on the local disk of whoever ran it)."""

from __future__ import annotations

import pickle

import dagster as dg

from medvec.home import dagster_io_dir
from medvec.storage import HomePath, as_path, write_atomic


def stored_value(home: HomePath, asset_key: dg.AssetKey, partition: str | None = None) -> HomePath:
    """Where the IO manager keeps an asset (partition)'s value under the home."""
    folder = dagster_io_dir(home) / "/".join(asset_key.path)
    return folder / (f"{partition}.pkl" if partition is not None else "value.pkl")


class HomePickleIOManager(dg.ConfigurableIOManager):
    """Pickles each asset partition's value to `<home>/dagster-io/<asset key>/<partition>.pkl` (S3 when the
    home is). Only small values pass through it: a batch manifest, the resolved model's description."""

    home: str
    s3_endpoint_url: str | None = None

    def _path(self, context) -> HomePath:
        home = as_path(self.home, self.s3_endpoint_url)
        if not context.has_asset_key:  # an op's output (rescan_job): kept per run and step
            output = context.upstream_output if isinstance(context, dg.InputContext) else context
            return dagster_io_dir(home) / "runs" / output.run_id / output.step_key / f"{output.name}.pkl"
        if not context.has_asset_partitions:
            return stored_value(home, context.asset_key)
        keys = context.asset_partition_keys
        if len(keys) != 1:
            raise dg.DagsterInvariantViolationError(
                f"{context.asset_key.to_user_string()}: one partition per value, got {len(keys)}")
        return stored_value(home, context.asset_key, keys[0])

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        write_atomic(self._path(context), pickle.dumps(obj))

    def load_input(self, context: dg.InputContext):
        path = self._path(context)
        try:
            return pickle.loads(path.read_bytes())
        except FileNotFoundError:
            what = context.asset_key.to_user_string() if context.has_asset_key else context.upstream_output.name
            raise dg.DagsterInvariantViolationError(f"{what} has no stored value at {path}: materialise it first") from None
