"""LanceDB tables: the connection, record schemas, per-model image tables, maintenance, inventory."""
