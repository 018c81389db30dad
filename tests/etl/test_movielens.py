"""MovieLens readers: ml-1m `.dat` (latin-1, `::`) and the csv releases, bad rows by reason.

Fixtures follow the releases' README files (ml-1m README; ml-20m / ml-32m README.html).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from etl.errors import EtlError
from etl.movielens import (
    Source,
    find_release,
    iter_zip_work,
    parse_ml_csv_movies,
    parse_ml_csv_ratings,
    parse_ml_dat_movies,
    parse_ml_dat_ratings,
)
from etl.readers import BadRows

ML1M_RATINGS = b"1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n"
ML1M_MOVIES = (
    b"1::Toy Story (1995)::Animation|Children's|Comedy\n"
    b"2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
    b"73::Mis\xe9rables, Les (1995)::Drama|Musical\n"  # latin-1, as in the release
)
ML20M_RATINGS = b"userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n"
ML20M_MOVIES = (
    b"movieId,title,genres\n"
    b"1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    b'11,"American President, The (1995)",Comedy|Drama|Romance\n'
    b'2000,"Lethal Weapon ""Unrated"" (1987)",Action\n'
    b"131262,Innocence (2014),(no genres listed)\n"
)


def test_dat_ratings() -> None:
    bad = BadRows()
    rows = parse_ml_dat_ratings(ML1M_RATINGS, "ratings.dat", bad).to_pylist()
    assert rows == [
        {"user": "1", "item": "1193", "rating": 5.0, "timestamp": 978300760},
        {"user": "1", "item": "661", "rating": 3.0, "timestamp": 978302109},
        {"user": "2", "item": "1357", "rating": 5.0, "timestamp": 978298709},
    ]
    assert bad.total() == 0


def test_dat_ratings_bad_rows() -> None:
    block = (
        b"1::1193::5::978300760\n"
        b"1::661::3\n"  # three fields
        b"1::661::3::9::9\n"  # five fields
        b"x::661::3::978302109\n"  # non-numeric user
        b"1::661::good::978302109\n"  # non-numeric rating
        b"1::661::4::yesterday\n"  # non-numeric timestamp
        b"1::661::4::-5\n"  # negative timestamp
        b"1,2,3.5,1112486027\n"  # a csv line: one field
        b"007::0661::4::978302110\n"  # leading zeros: the same ids
    )
    bad = BadRows()
    table = parse_ml_dat_ratings(block, "ratings.dat", bad)
    assert table.to_pylist() == [
        {"user": "1", "item": "1193", "rating": 5.0, "timestamp": 978300760},
        {"user": "7", "item": "661", "rating": 4.0, "timestamp": 978302110},
    ]
    assert bad.as_dict() == {
        "ratings.dat": {"bad_id": 1, "bad_rating": 1, "bad_timestamp": 2, "wrong_column_count": 3}
    }


def test_dat_movies_latin1_and_bad_rows() -> None:
    block = ML1M_MOVIES + (
        b"74::Bad::Title (1995)::Drama\n"  # the separator inside the title
        b"75::Caf\xc3\xa9 (1995)::Drama\n"  # UTF-8 bytes in the latin-1 file
        b"76::No Genres\n"  # two fields
        b"x7::Title (1995)::Drama\n"  # non-numeric id
    )
    bad = BadRows()
    rows = parse_ml_dat_movies(block, "movies.dat", bad).to_pylist()
    assert rows == [
        {"asin": "1", "title": "Toy Story (1995)", "brand": "", "category_l1": "Animation",
         "category_l2": "Children's", "category_l3": "Comedy",
         "genres": "Animation|Children's|Comedy"},
        {"asin": "2", "title": "Jumanji (1995)", "brand": "", "category_l1": "Adventure",
         "category_l2": "Children's", "category_l3": "Fantasy",
         "genres": "Adventure|Children's|Fantasy"},
        {"asin": "73", "title": "Mis\u00e9rables, Les (1995)", "brand": "", "category_l1": "Drama",
         "category_l2": "Musical", "category_l3": "", "genres": "Drama|Musical"},
    ]  # fmt: skip
    assert bad.as_dict() == {
        "movies.dat": {
            "bad_id": 1,
            "separator_in_field": 1,
            "utf8_in_latin1_file": 1,
            "wrong_column_count": 1,
        }
    }


def test_csv_ratings_and_bad_rows() -> None:
    block = ML20M_RATINGS + (
        b"1,32,x,1112484819\n"  # non-numeric rating
        b"1,47\n"  # two columns
        b"1,50,4.0,1112484580.5\n"  # fractional timestamp
        b"\xe91,50,4.0,1112484580\n"  # latin-1 byte in a UTF-8 file
        b"2,3,nan,1\n"  # not a finite rating
    )
    bad = BadRows()
    rows = parse_ml_csv_ratings(block, "ratings.csv", bad).to_pylist()
    assert rows == [
        {"user": "1", "item": "2", "rating": 3.5, "timestamp": 1112486027},
        {"user": "1", "item": "29", "rating": 3.5, "timestamp": 1112484676},
    ]
    assert bad.as_dict() == {
        "ratings.csv": {
            "bad_rating": 2,
            "bad_timestamp": 1,
            "non_utf8": 1,
            "wrong_column_count": 1,
        }
    }
    clean = parse_ml_csv_ratings(ML20M_RATINGS, "r", BadRows())
    assert clean.column("item").to_pylist() == ["2", "29"]


def test_csv_movies_quoted_titles_and_bad_rows() -> None:
    block = ML20M_MOVIES + (
        b"12,Dracula, Dead and Loving It (1995),Comedy|Horror\n"  # unquoted comma in title
        b"13,Balto (1995)\n"  # two fields
        b"14,Nixon \xe9 (1995),Drama\n"  # latin-1 byte in a UTF-8 file
    )
    bad = BadRows()
    rows = parse_ml_csv_movies(block, "movies.csv", bad).to_pylist()
    assert [(r["asin"], r["title"], r["genres"]) for r in rows] == [
        ("1", "Toy Story (1995)", "Adventure|Animation|Children|Comedy|Fantasy"),
        ("11", "American President, The (1995)", "Comedy|Drama|Romance"),
        ("2000", 'Lethal Weapon "Unrated" (1987)', "Action"),
        ("131262", "Innocence (2014)", ""),
    ]
    assert [r["category_l3"] for r in rows] == ["Children", "Romance", "", ""]
    assert bad.as_dict() == {
        "movies.csv": {"non_utf8": 1, "separator_in_field": 1, "wrong_column_count": 1}
    }


def _zip(path: Path, folder: str, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"{folder}/{name}", data)
    return path


def test_release_found_as_folder_or_zip(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    _zip(raw / "ml-1m.zip", "ml-1m", {"ratings.dat": ML1M_RATINGS, "movies.dat": ML1M_MOVIES})
    release, ratings, movies = find_release(raw)
    assert release.name == "ml-1m"
    assert (ratings.member, movies.member) == ("ml-1m/ratings.dat", "ml-1m/movies.dat")
    blocks = list(iter_zip_work(ratings, first_index=3, block_bytes=30))
    assert [w.index for w in blocks] == [3, 4, 5]
    assert b"".join(w.data or b"" for w in blocks) == ML1M_RATINGS
    assert blocks[0].label == "ml-1m.zip:ml-1m/ratings.dat"
    folder = raw / "ml-20m"
    folder.mkdir()
    (folder / "ratings.csv").write_bytes(ML20M_RATINGS)
    (folder / "movies.csv").write_bytes(ML20M_MOVIES)
    with pytest.raises(EtlError, match=r"several MovieLens releases .* \(ml-1m, ml-20m\)"):
        find_release(raw)
    release, ratings, _ = find_release(raw, "ml-20m")
    assert ratings.path == folder / "ratings.csv" and ratings.member is None


def test_release_errors_name_the_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(EtlError, match=r"no MovieLens release in .*: place ml-1m.zip"):
        find_release(raw)
    with pytest.raises(EtlError, match=r"unknown MovieLens release 'ml-2m'"):
        find_release(raw, "ml-2m")
    folder = raw / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_bytes(ML20M_RATINGS)  # csv release named .dat
    (folder / "movies.dat").write_bytes(ML1M_MOVIES)
    with pytest.raises(
        EtlError,
        match=r"ml-1m/ratings.dat holds MovieLens CSV ratings \(userId,movieId,rating,timestamp\), "
        r"not MovieLens ml-1m ratings",
    ):
        find_release(raw)
    (folder / "ratings.dat").write_bytes(ML1M_RATINGS)
    (folder / "movies.dat").write_bytes(ML1M_RATINGS)  # ratings in place of movies
    with pytest.raises(EtlError, match=r"movies.dat holds MovieLens ml-1m ratings"):
        find_release(raw)


def test_truncated_zip_is_named(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    big = b"".join(b"%d::%d::4::97830%04d\n" % (i % 50, i, i % 9999) for i in range(20000))
    path = _zip(raw / "ml-1m.zip", "ml-1m", {"ratings.dat": big, "movies.dat": ML1M_MOVIES})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EtlError, match=r"ml-1m.zip: not a readable zip"):
        find_release(raw)
    # The directory intact but the compressed data damaged: named while reading the member.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-1m/ratings.dat", big)
        zf.writestr("ml-1m/movies.dat", ML1M_MOVIES)
    data = bytearray(path.read_bytes())
    data[2000:2400] = bytes(400)
    path.write_bytes(bytes(data))
    with pytest.raises(EtlError, match=r"ml-1m.zip: unreadable archive"):
        find_release(raw)
    with pytest.raises(EtlError, match=r"ml-1m.zip: truncated or corrupt zip"):
        list(iter_zip_work(Source(path, "ml-1m/ratings.dat"), 0))
