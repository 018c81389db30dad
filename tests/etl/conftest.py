"""Small handwritten raw inputs whose every expected output is known by hand."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

# 2018 ratings (item,user,rating,timestamp). After the rules:
#   U1: A dup (ts 50 kept, rating 3), B/C tie at 200 keep file order -> A D B C E (5 ratings)
#   U2: X has no metadata -> 4 left -> dropped (< 5)
#   U3: a Beauty 5-core user -> removed from pre-training
#   U4: 3 ratings -> dropped
#   U5: H has no usable text -> dropped item; E/D tie at 400 -> C E D F B (5 ratings)
#   U6: three bad rows (bad rating, wrong column count, bad timestamp)
RATINGS_CSV = """\
A,U1,5.0,100
B,U1,4.0,200
A,U1,3.0,50
C,U1,5.0,200
D,U1,2.0,150
E,U1,1.0,300
B,U2,5.0,10
C,U2,5.0,20
D,U2,5.0,30
X,U2,5.0,40
E,U2,5.0,50
A,U3,5.0,1
B,U3,5.0,2
C,U3,5.0,3
D,U3,5.0,4
E,U3,5.0,5
A,U4,1.0,1
B,U4,1.0,2
C,U4,1.0,3
F,U5,4.0,500
E,U5,4.0,400
D,U5,4.0,400
C,U5,4.0,300
H,U5,4.0,600
B,U5,4.0,700
G,U6,abc,100
G,U6,5.0
G,U6,5.0,1.5e3
"""

META_2018 = [
    {
        "asin": "A",
        "title": "Shampoo &amp; Conditioner <b>Set</b>",
        "brand": "Acme",
        "category": ["Beauty", "Hair Care", "Shampoo", "Extra"],
    },
    {"asin": "B", "title": "Lip Balm", "brand": "", "category": ["Beauty"]},
    {"asin": "C", "title": "Face Cream", "brand": "Glow", "category": []},
    {"asin": "D", "title": "Nail Polish", "brand": "Acme"},
    {"asin": "E", "title": "Hair Dryer", "brand": "Windy", "category": ["Beauty", "Tools"]},
    {"asin": "F", "title": "Bath Salt", "brand": "Sea"},
    {"asin": "G", "title": "Hair Gel", "brand": "Acme"},
    {"asin": "H", "title": '<span class="x"', "brand": ""},
    {"asin": "A", "title": "Duplicate record", "brand": "Other"},
]
META_2018_BAD_LINES = ['{"asin": "Z", "title": ', '{"title": "no asin"}']

# 2014 Beauty 5-core reviews: R1 has a duplicate A (ts 5 kept) and a K/L tie at 20;
# U3 has only 2 reviews and stays (the 5-core file is never re-filtered).
REVIEWS_2014 = [
    ("R1", "A", 5.0, 10),
    ("R1", "K", 3.0, 20),
    ("R1", "L", 2.0, 20),
    ("R1", "A", 4.0, 5),
    ("R1", "H", 1.0, 30),
    ("U3", "A", 5.0, 2),
    ("U3", "K", 4.0, 1),
]
# 2014 metadata (Python literals): K and H have text here; L has none anywhere.
META_2014 = [
    {
        "asin": "K",
        "title": "Makeup Kit",
        "brand": "Kbrand",
        "categories": [["Beauty", "Makeup", "Kits"]],
    },
    {"asin": "H", "title": "Hair Band", "brand": "", "categories": [["Beauty", "Hair Care"]]},
]


def write_gz(path: Path, lines: list[str]) -> Path:
    """Write text lines into a gzip file (mtime 0 so bytes are reproducible)."""
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0))
    return path


def review_line(user: str, item: str, rating: float, ts: int) -> str:
    """One 2014-format review line (strict JSON)."""
    return json.dumps(
        {
            "reviewerID": user,
            "asin": item,
            "reviewerName": "x",
            "helpful": [0, 0],
            "reviewText": "",
            "overall": rating,
            "summary": "",
            "unixReviewTime": ts,
            "reviewTime": "01 01, 1970",
        }
    )


def write_handwritten_raw(raw: Path) -> Path:
    """Write the handwritten RAW folder described above; returns it."""
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "all_csv_files.csv").write_text(RATINGS_CSV)
    write_gz(
        raw / "All_Amazon_Meta.json.gz", [json.dumps(m) for m in META_2018] + META_2018_BAD_LINES
    )
    write_gz(raw / "reviews_Beauty_5.json.gz", [review_line(*r) for r in REVIEWS_2014])
    write_gz(raw / "meta_Beauty.json.gz", [repr(m) for m in META_2014])
    return raw


@pytest.fixture
def handwritten_raw(tmp_path: Path) -> Path:
    """The handwritten RAW folder in a temporary directory."""
    return write_handwritten_raw(tmp_path / "raw")


def read_atomic(path: Path) -> list[list[str]]:
    """An atomic file as rows of fields, header first."""
    return [line.split("\t") for line in path.read_text().splitlines()]


def decode_pieces(field: str) -> str:
    """SentencePiece pieces of a token_seq field back to the words they spell."""
    return "".join(field.split(" ")).replace("\u2581", " ").strip()
