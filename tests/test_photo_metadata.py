"""Photo metadata at ingest: EXIF date, camera, lens, GPS and orientation, IPTC and XMP keywords
and descriptions, read with Pillow from JPEGs made here; absurd values dropped one key at a
time; filterable, keyword-searchable, and refreshed on existing indexes without re-embedding."""

import io
import sqlite3
import struct

import pytest
from click.testing import CliRunner
from PIL import ExifTags, Image

from e5v_search.cli import cli
from e5v_search.engine import Engine
from e5v_search.ingest.photo_metadata import merged, photo_metadata

XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag><rdf:li>lake</rdf:li>'
    "<rdf:li>Sommar</rdf:li></rdf:Bag></dc:subject><dc:description><rdf:Alt>"
    '<rdf:li xml:lang="x-default">Swimming in Mälaren</rdf:li></rdf:Alt></dc:description>'
    "</rdf:Description></rdf:RDF></x:xmpmeta>"
)


def _iptc_segment(fields) -> bytes:
    """An APP13 (Photoshop 3.0) segment holding IPTC records, as photo tools write them."""
    data = b"".join(b"\x1c" + bytes([r, d]) + struct.pack(">H", len(v)) + v for r, d, v in fields)
    data += b"\x00" * (len(data) % 2)
    payload = b"Photoshop 3.0\x00" + b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(data)) + data
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def _jpeg(path, *, base=None, details=None, gps=None, xmp=None, iptc=None, color=(200, 30, 30)):
    exif = Image.Exif()
    for tag, value in (base or {}).items():
        exif[tag] = value
    for ifd, values in ((ExifTags.IFD.Exif, details), (ExifTags.IFD.GPSInfo, gps)):
        if values:
            exif.get_ifd(ifd).update(values)
    buffer = io.BytesIO()
    options = {"xmp": xmp.encode()} if xmp else {}
    Image.new("RGB", (48, 32), color).save(buffer, "JPEG", exif=exif, **options)
    data = buffer.getvalue()
    if iptc:
        data = data[:2] + _iptc_segment(iptc) + data[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _canon(path):
    return _jpeg(
        path,
        base={0x010F: "Canon", 0x0110: "Canon EOS R6", 0x0112: 1, 0x010E: "at the lake"},
        details={0x9003: "2023:07:04 10:15:00", 0x9011: "+02:00", 0xA434: "RF24-105mm F4 L"},
        gps={1: "N", 2: (59.0, 19.0, 48.0), 3: "E", 4: (18.0, 4.0, 12.0)},
        xmp=XMP,
        iptc=[(2, 25, b"sea"), (2, 25, "Öland".encode()), (2, 25, b"lake"), (2, 120, b"IPTC")],
    )


def test_exif_gps_iptc_and_xmp_become_flat_keys(tmp_path):
    assert photo_metadata(_canon(tmp_path / "canon.jpg")) == {
        "taken": "2023-07-04T10:15:00+02:00",
        "camera": "Canon EOS R6",
        "lens": "RF24-105mm F4 L",
        "lat": 59.33,
        "lon": 18.07,
        "keywords": ["sea", "Öland", "lake", "Sommar"],  # IPTC first, each once
        "description": "Swimming in Mälaren",  # XMP over IPTC over EXIF
        "orientation": 1,
    }


def test_south_west_no_offset_and_a_make_the_model_lacks(tmp_path):
    path = _jpeg(
        tmp_path / "a.jpg",
        base={0x010F: "FUJIFILM", 0x0110: "X-T4", 0x0112: 6},
        details={0x9003: "2021:12:31 23:59:59"},
        gps={1: "S", 2: (33.0, 51.0, 36.0), 3: "W", 4: (70.0, 30.0, 0.0)},
        iptc=[(2, 120, b"Andes")],
    )
    assert photo_metadata(path) == {
        "taken": "2021-12-31T23:59:59",
        "camera": "FUJIFILM X-T4",
        "lat": -33.86,
        "lon": -70.5,
        "description": "Andes",
        "orientation": 6,
    }


@pytest.mark.parametrize(
    "options",
    [
        {"details": {0x9003: "0000:00:00 00:00:00"}},
        {"details": {0x9003: "2023:13:40 10:00:00"}},
        {"details": {0x9003: "not a date"}},
        {"details": {0x9003: "1700:01:01 00:00:00"}},
        {"gps": {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (18.0, 0.0, 0.0)}},
        {"gps": {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)}},  # no fix
        {"gps": {1: "X", 2: (59.0, 0.0, 0.0), 3: "E", 4: (18.0, 0.0, 0.0)}},
        {"gps": {2: (59.0, 0.0, 0.0), 4: (18.0, 0.0, 0.0)}},  # no hemisphere
        {"base": {0x0112: 42}},
        {"base": {0x010E: "x" * 5000}},
        {"base": {0x010E: "   \x00\x00  "}},
        {"xmp": "<x:xmpmeta><unclosed"},
    ],
)
def test_an_absurd_value_is_dropped_and_the_rest_kept(tmp_path, options):
    base = {0x010F: "Canon", 0x0110: "Canon EOS R6", **options.pop("base", {})}
    found = photo_metadata(_jpeg(tmp_path / "a.jpg", base=base, **options))
    assert found["camera"] == "Canon EOS R6"
    assert set(found) == {"camera"}


def test_a_file_that_is_not_an_image_has_no_metadata(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8 not really")
    assert photo_metadata(tmp_path / "x.jpg") == {}
    assert photo_metadata(tmp_path / "missing.jpg") == {}


def test_given_metadata_wins_and_other_stored_keys_are_kept():
    stored = {"album": "2023", "camera": "old", "lens": "gone"}
    assert merged(stored, {"camera": "Canon"}, {"description": "mine"}) == {
        "album": "2023",
        "camera": "Canon",
        "description": "mine",
    }


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    _canon(folder / "Summer 2023" / "IMG_0042.jpg")
    _jpeg(folder / "winter" / "snow.jpg", details={0x9003: "2022:01:15 09:00:00"}, color=(9, 9, 9))
    return folder


def test_ingested_photos_filter_and_keyword_search_by_their_metadata(tmp_path, tiny_dir, photos):
    index = tmp_path / "ix"
    with Engine.open(index, model=str(tiny_dir), device="cpu", create=True) as engine:
        assert engine.ingest([photos], progress=False).added == 2
        canon = engine.items(engine.ids_of([(str(photos / "Summer 2023" / "IMG_0042.jpg"), "")]))
        assert canon[0]["metadata"]["camera"] == "Canon EOS R6"
        summer = "json_extract(metadata, '$.taken') >= '2023-07-01'"
        found = engine.search("a photo", modality="image", where=summer)
        assert [r.source for r in found] == [canon[0]["source"]]
        by_camera = engine.search("a photo", modality="image", where={"camera": "Canon EOS R6"})
        assert [r.id for r in by_camera] == [canon[0]["id"]]
        tagged = "EXISTS (SELECT 1 FROM json_each(metadata, '$.keywords') WHERE value = 'lake')"
        assert [r.id for r in engine.search("x", mode="keyword", where=tagged)] == []
        assert [r.id for r in engine.search("photo", modality="image", where=tagged)] == [
            canon[0]["id"]
        ]
        for words in ("canon", "malaren", "Öland", "summer", "img_0042"):
            assert [r.id for r in engine.search(words, mode="keyword")] == [canon[0]["id"]]
    env = {"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu"}
    args = ["search", "snow", "--mode", "keyword", "--index", str(index)]
    result = CliRunner().invoke(
        cli, [*args, "--where", "json_extract(metadata, '$.taken') < '2023'"], env=env
    )
    assert result.exit_code == 0 and "snow.jpg" in result.stdout, result.output


def test_refresh_metadata_fills_an_older_index_without_embedding(tmp_path, tiny_dir, photos):
    index = tmp_path / "ix"
    with Engine.open(index, model=str(tiny_dir), device="cpu", create=True) as engine:
        engine.ingest([photos], progress=False)
    conn = sqlite3.connect(index / "catalog.sqlite")
    conn.execute('UPDATE items SET metadata = \'{"album": "x"}\'')  # as an earlier version
    conn.commit()
    vectors = conn.execute("SELECT item_id, vector FROM vectors ORDER BY item_id").fetchall()
    conn.close()
    # A model that cannot load: any embedding would fail the run.
    with Engine.open(index, model=str(tmp_path / "no-model")) as engine:
        plain = engine.ingest([photos], progress=False)
        assert (plain.unchanged, plain.refreshed) == (2, 0)  # same size and mtime: not read
        report = engine.ingest([photos], progress=False, refresh_metadata=True)
        assert (report.unchanged, report.refreshed, report.added, report.updated) == (2, 2, 0, 0)
        rows = {r["source"].rsplit("/", 1)[1]: r["metadata"] for r in engine.items([1, 2])}
        assert rows["IMG_0042.jpg"]["camera"] == "Canon EOS R6"
        assert rows["IMG_0042.jpg"]["album"] == "x"  # a key the file does not hold is kept
        assert rows["snow.jpg"]["taken"] == "2022-01-15T09:00:00"
        assert [r.id for r in engine.search("canon", mode="keyword")] == [1]
        assert engine.verify()["problems"] == []  # the rows' checksums follow the change
    conn = sqlite3.connect(index / "catalog.sqlite")
    after = conn.execute("SELECT item_id, vector FROM vectors ORDER BY item_id").fetchall()
    conn.close()
    assert after == vectors  # byte for byte


def test_cli_refresh_metadata_says_how_many(tmp_path, tiny_dir, photos):
    env = {"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu"}
    index = str(tmp_path / "ix")
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(photos), "--index", index], env=env).exit_code == 0
    result = runner.invoke(
        cli, ["ingest", str(photos), "--index", index, "--refresh-metadata"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "unchanged 2" in result.stderr and "metadata refreshed 0" in result.stderr


def test_a_heic_file_gives_its_exif_through_pillow_heif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("libheif here has no HEIF encoder")
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 15"
    exif.get_ifd(ExifTags.IFD.Exif)[0x9003] = "2024:05:01 08:00:00"
    path = tmp_path / "IMG_0001.HEIC"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(path, "HEIF", exif=exif.tobytes())
    assert photo_metadata(path) == {"taken": "2024-05-01T08:00:00", "camera": "Apple iPhone 15"}
