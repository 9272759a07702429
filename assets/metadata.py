"""Dagster's standard metadata for Medvec's assets: who owns them, and for a LanceDB table its
name, row count and column schema, so the catalogue shows every table the same way."""

import dagster as dg
import pyarrow as pa

#: Owners every asset names (Dagster accepts `team:<name>` or an email address).
OWNERS = ["team:medvec"]


def _type_name(arrow_type: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(arrow_type):
        return f"{_type_name(arrow_type.value_type)}[{arrow_type.list_size}]"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"list<{_type_name(arrow_type.value_type)}>"
    return str(arrow_type)


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[
        dg.TableColumn(name=f.name, type=_type_name(f.type),
                       constraints=dg.TableColumnConstraints(nullable=f.nullable)) for f in schema])


def table_metadata(table) -> dict:
    """`dagster/table_name`, `dagster/row_count` and `dagster/column_schema` of a LanceDB table."""
    return {"dagster/table_name": table.name, "dagster/row_count": table.count_rows(),
            "dagster/column_schema": column_schema(table.schema)}

#: Tags every asset carries; the GPU ones say so, which is what a deployment sizes workers by.
TAGS = {"domain": "medical-imaging"}
GPU_TAGS = {**TAGS, "compute": "gpu"}
