"""Write RecBole atomic files (`.inter`, `.item`): tab-separated, typed header, no quoting."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

INTER_HEADER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
ITEM_HEADER = (
    "item_id:token",
    "title:token_seq",
    "brand:token_seq",
    "category_l1:token",
    "category_l2:token",
    "category_l3:token",
)
INTER_COLUMNS = ("user", "item", "rating", "timestamp")
ITEM_COLUMNS = ("asin", "title", "brand", "category_l1", "category_l2", "category_l3")
_BATCH_ROWS = 1 << 20  # rows formatted at once: bounds memory for 10M-row files


def _write_tsv(path: Path, header: tuple[str, ...], table: pa.Table, columns: tuple) -> None:
    """Format `columns` of `table` as TSV lines under `header`; values must hold no tab/newline."""
    with open(path, "wb") as f:
        f.write(("\t".join(header) + "\n").encode())
        for start in range(0, table.num_rows, _BATCH_ROWS):
            batch = table.slice(start, _BATCH_ROWS)
            cols = [pc.cast(batch.column(c), pa.string()) for c in columns]
            lines = pc.binary_join_element_wise(*cols, "\t")
            f.write(("\n".join(lines.to_pylist()) + "\n").encode())


def write_inter(path: Path, table: pa.Table) -> None:
    """Write (user, item, rating, timestamp) rows, in the table's order, as a `.inter` file."""
    _write_tsv(path, INTER_HEADER, table, INTER_COLUMNS)


def write_item(path: Path, table: pa.Table) -> None:
    """Write (asin, title, brand, category_l1..l3) rows, in the table's order, as a `.item` file."""
    _write_tsv(path, ITEM_HEADER, table, ITEM_COLUMNS)
