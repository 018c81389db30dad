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
# Optional item columns, written after the others when the items table has them: the 2023
# `features` and `description` (SentencePiece pieces, when asked for), MovieLens `genres`.
EXTRA_ITEM_HEADER = {
    "features": "features:token_seq",
    "description": "description:token_seq",
    "genres": "genres:token_seq",
}
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


def write_inter(path: Path, table: pa.Table, millis: bool = False) -> None:
    """Write (user, item, rating, timestamp) rows, in the table's order, as a `.inter` file.

    `millis`: the timestamps are milliseconds, written as seconds with three decimals
    (`1628643414.042`, exact); otherwise they are whole seconds.
    """
    if millis:
        from etl.amazon2023 import seconds_text  # here: the 2018 path never imports it

        column = table.column("timestamp")
        index = table.column_names.index("timestamp")
        table = table.set_column(
            index,
            "timestamp",
            pa.chunked_array([seconds_text(c) for c in column.chunks], pa.string()),
        )
    _write_tsv(path, INTER_HEADER, table, INTER_COLUMNS)


def write_item(path: Path, table: pa.Table) -> None:
    """Write (asin, title, brand, category_l1..l3[, extra columns]) rows, in the table's order,
    as a `.item` file; the extra columns of `EXTRA_ITEM_HEADER` are written when present."""
    extra = tuple(c for c in EXTRA_ITEM_HEADER if c in table.column_names)
    header = ITEM_HEADER + tuple(EXTRA_ITEM_HEADER[c] for c in extra)
    _write_tsv(path, header, table, ITEM_COLUMNS + extra)
