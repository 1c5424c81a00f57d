"""FERPlus: row-position join with fer2013.csv, the official majority rule, blank rows, soft labels."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from fea20k.errors import SourceLayoutError
from fea20k.ingest.ferplus import FERPLUS_TO_CANONICAL, FerPlus, majority_vote
from tests.fixtures.corpora import build_ferplus, write_image
from tests.ingest._helpers import assert_properties, check, run, write_broken


@pytest.mark.parametrize(("raw", "canonical"), [("neutral", "neutral"), ("happiness", "happiness"),
                                                ("surprise", "surprise"), ("sadness", "sadness"), ("anger", "anger"),
                                                ("disgust", "disgust"), ("fear", "fear"), ("contempt", "contempt")])
def test_label_table(raw: str, canonical: str) -> None:
    assert FERPLUS_TO_CANONICAL[raw] == canonical
    assert "unknown" not in FERPLUS_TO_CANONICAL and "NF" not in FERPLUS_TO_CANONICAL


def test_majority_rule() -> None:
    assert majority_vote([6, 0, 1, 1, 0, 0, 0, 0, 2, 0])[:2] == ("neutral", None)  # singles dropped: 6 of 8
    assert majority_vote([4, 0, 0, 1, 3, 2, 0, 0, 0, 0])[:2] == (None, "ferplus_unknown")  # 4 of 9 <= 50 %
    assert majority_vote([0, 0, 0, 0, 0, 0, 0, 0, 0, 10])[:2] == (None, "ferplus_nf")
    assert majority_vote([0, 0, 0, 0, 0, 0, 0, 0, 10, 0])[:2] == (None, "ferplus_unknown")
    assert majority_vote([1, 1, 1, 1, 1, 1, 1, 1, 1, 1])[:2] == (None, "ferplus_unknown")
    _, _, dist = majority_vote([3, 0, 0, 0, 0, 0, 0, 0, 2, 0])
    assert dist["neutral"] == 1.0


def test_exact_records(tmp_path: Path) -> None:
    root, expected = build_ferplus(tmp_path)
    recs = run("ferplus", root)
    by_id = check(recs, expected)
    r = by_id["src/fer2013#3"]
    assert (r.image.root, r.image.path, r.image.frame) == ("src", "fer2013.csv", 3)  # row 3, not name number 2
    assert r.meta["votes"] == [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]
    assert_properties(recs)


def test_row_count_mismatch(tmp_path: Path) -> None:
    root, _ = build_ferplus(tmp_path)
    with (root / "fer2013new.csv").open("a") as f:
        f.write("Training,fer0000009.png,10,0,0,0,0,0,0,0,0,0\n")
    with pytest.raises(SourceLayoutError, match="7 rows.*6"):
        run("ferplus", root)


def test_missing_fer2013(tmp_path: Path) -> None:
    root, _ = build_ferplus(tmp_path)
    (root / "fer2013.csv").unlink()
    with pytest.raises(SourceLayoutError, match="fer2013.csv"):
        run("ferplus", root)


def test_malformed_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, _ = build_ferplus(tmp_path)
    text = (root / "fer2013new.csv").read_text().splitlines()
    text[2] = "Training,fer0000001.png,6,0,x,1,0,0,0,0,2,0"
    text[3] = "PublicTest,,0,0"
    (root / "fer2013new.csv").write_text("\n".join(text) + "\n")
    by_id = {r.id: r for r in run("ferplus", root)}
    assert by_id["src/fer2013#1"].reasons == ["label_parse_error"]
    assert by_id["src/fer2013#2"].reasons == ["label_parse_error"]
    assert "fer2013new.csv:3" in caplog.text and "fer2013new.csv:4" in caplog.text


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_FERPLUS"), reason="set FEA20K_DATA_FERPLUS")
def test_real_data() -> None:
    recs = run("ferplus", Path(os.environ["FEA20K_DATA_FERPLUS"]))
    assert len(recs) == 35_887


# ------------------------------------------------------------------------------------------- layouts seen on disk


def test_trailing_blank_lines_in_fer2013new_csv(tmp_path: Path) -> None:
    root, expected = build_ferplus(tmp_path)
    with (root / "fer2013new.csv").open("a", newline="") as f:
        f.write("\n\r\n")  # two blank lines after the last row
    with (root / "fer2013.csv").open("a", newline="") as f:
        f.write("\n")
    recs = run("ferplus", root)
    check(recs, expected)
    assert_properties(recs)


def test_blank_line_inside_fer2013new_csv_keeps_the_join_and_the_fer2013_row(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A blank line in one file only: the join skips it, ids and frames stay the fer2013.csv rows, warnings name
    the fer2013new.csv line."""
    root, expected = build_ferplus(tmp_path)
    lines = (root / "fer2013new.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",6,0,1,1,", ",6,0,x,1,")  # row 1: malformed votes
    (root / "fer2013new.csv").write_text("\n".join([lines[0], lines[1], "", *lines[2:]]) + "\n")
    expected["src/fer2013#1"] = {"split": "train", "reasons": ["label_parse_error"], "frame": 1}
    recs = run("ferplus", root)
    check(recs, expected)
    assert "fer2013new.csv:4: vote counts are not integers" in caplog.text  # line 4 of the file, row 1 of both


def test_row_count_message_names_the_rule(tmp_path: Path) -> None:
    root, _ = build_ferplus(tmp_path)
    with (root / "fer2013new.csv").open("a") as f:
        f.write("Training,fer0000009.png,10,0,0,0,0,0,0,0,0,0\n\n")
    with pytest.raises(SourceLayoutError) as err:
        run("ferplus", root)
    assert str(err.value) == (f"{root / 'fer2013new.csv'} has 7 rows but {root / 'fer2013.csv'} has 6 (blank lines "
                              "not counted); FERPlus is joined to fer2013.csv by row position, so both must be the "
                              "full files of one release (35,887 rows each)")


# The generated layout: generate_training_data.py writes FER2013Train/Valid/Test with PNGs and a headerless label.csv;
# the label.csv committed in the FERPlus repository has a face-rect column, the script's own output has none.
GENERATED = {
    "FER2013Train": ['fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0',  # 4 of 9 -> unknown
                     'fer0000001.png,"(0, 0, 48, 48)",6,0,1,1,0,0,0,0,2,0',  # neutral
                     'fer0000003.png,"(2, 1, 46, 47)",0,0,0,0,10,0,0,0,0,0'],  # anger, a smaller rect
    "FER2013Valid": ["fer0000002.png,0,10,0,0,0,0,0,0,0,0",  # no rect column (the script's output)
                     "fer0000005.png,0,0,0,0,0,0,0,0,2,8",  # NF
                     "fer0000006.png,0,0,0,0,0,0,7,3,0,0"],  # listed, PNG missing
    "FER2013Test": ['fer0000004.png,"(0, 0, 48, 48)",0,0,0,0,0,0,7,3,0,0',  # fear
                    'fer0000007.png,"(0, 0, 48, 48)",0,0,10,0,0,0,0,0,0,0',  # 0-byte PNG
                    'fer0000008.png,"(0, 0, 48, 48)",0,0,10,0'],  # short row
}


def _generated(root: Path) -> dict[str, dict]:
    """Write the generated layout under ``root`` (PNG pixel value = its number); return the expected records."""
    for folder, rows in GENERATED.items():
        d = root / folder
        d.mkdir(parents=True)
        (d / "label.csv").write_bytes(("\r\n".join(rows) + "\r\n\r\n").encode())  # csv.writer's CRLF, a blank line
        for row in rows:
            name = row.split(",")[0]
            if name == "fer0000007.png":
                (d / name).write_bytes(b"")
            elif name != "fer0000006.png":
                write_image(d / name, int(name[3:10]), (48, 48), "L")
    whole = [0.0, 0.0, 48.0, 48.0]
    return {
        "src/FER2013Train/fer0000000": {"split": "train", "emotion": None, "reasons": ["ferplus_unknown"]},
        "src/FER2013Train/fer0000001": {"split": "train", "emotion": "neutral", "reasons": [], "bbox": whole,
                                        "dist": {"neutral": 1.0}, "path": "FER2013Train/fer0000001.png"},
        "src/FER2013Train/fer0000003": {"split": "train", "emotion": "anger", "reasons": [],
                                        "bbox": [2.0, 1.0, 44.0, 46.0]},
        "src/FER2013Valid/fer0000002": {"split": "val", "emotion": "happiness", "reasons": [], "bbox": whole,
                                        "name": "fer0000002.png"},
        "src/FER2013Valid/fer0000005": {"split": "val", "emotion": None, "reasons": ["ferplus_nf"]},
        "src/FER2013Valid/fer0000006": {"split": "val", "emotion": "fear", "reasons": ["image_missing"]},
        "src/FER2013Test/fer0000004": {"split": "test", "emotion": "fear", "reasons": [],
                                       "dist": {"fear": 0.7, "contempt": 0.3}},
        "src/FER2013Test/fer0000007": {"split": "test", "emotion": "surprise", "reasons": ["image_undecodable"]},
        "src/FER2013Test/fer0000008": {"split": "test", "emotion": None, "reasons": ["label_parse_error"]},
    }


@pytest.mark.parametrize("under", ["", "data"])
def test_generated_layout(tmp_path: Path, caplog: pytest.LogCaptureFixture, under: str) -> None:
    root = tmp_path / "FERPlus"
    expected = _generated(root / under)
    if under:
        expected = {k.replace("src/", "src/data/", 1): {**v, **({"path": f"data/{v['path']}"} if "path" in v else {})}
                    for k, v in expected.items()}
    stage = FerPlus({"source": "src", "root": str(root)})
    with caplog.at_level(logging.INFO, logger="fea20k"):
        recs = list(stage.iter_records())
    by_id = check(recs, expected)
    assert_properties(recs)
    pre = f"{under}/" if under else ""
    assert stage.layout_variant == (f"generated (generate_training_data.py): {pre}FER2013Train, {pre}FER2013Valid, "
                                    f"{pre}FER2013Test with label.csv and PNGs")
    assert (f"src: generated layout (generate_training_data.py): {pre}FER2013Train, {pre}FER2013Valid, "
            f"{pre}FER2013Test") in caplog.text
    assert f"{pre}FER2013Test/label.csv:3: 6 columns, expected name,rect and 10 vote counts" in caplog.text
    for rec in recs:  # each record points at its own PNG: the pixel value is the number in its name
        if not rec.reasons:
            assert Image.open(root / rec.image.path).getpixel((5, 5)) == int(rec.meta["ferplus_name"][3:10])
    r = by_id[f"src/{pre}FER2013Train/fer0000001"]
    assert r.meta["votes"] == [6, 0, 1, 1, 0, 0, 0, 0, 2, 0] and r.meta["split_raw"] == "FER2013Train"
    assert r.image.frame is None and r.meta["aligned"] is True and "pixels_in_csv" not in r.meta


def test_layout_detection_and_one_line_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, csv_expected = build_ferplus(tmp_path)
    gen_expected = _generated(root)
    with caplog.at_level(logging.INFO, logger="fea20k"):
        check(run("ferplus", root), csv_expected)  # both present: the release CSV wins, and the log says so
    assert ("src: fer2013new.csv found: reading the CSV layout (the generated folders in the root are ignored; set "
            "options.variant = \"generated\" to read them)") in caplog.text
    check(run("ferplus", root, variant="generated"), gen_expected)
    (root / "FER2013Valid" / "label.csv").unlink()
    with pytest.raises(SourceLayoutError) as err:
        run("ferplus", root, variant="generated")
    assert str(err.value) == ("source 'src' (ferplus): FER2013Valid/ has no label.csv; expected the headerless "
                              "label.csv that generate_training_data.py writes beside the PNGs")
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    with pytest.raises(SourceLayoutError) as err:
        run("ferplus", empty)
    assert str(err.value) == (f"source 'src' (ferplus): expected fer2013new.csv (with fer2013.csv) or the generated "
                              "folders FER2013Train/, FER2013Valid/, FER2013Test/ (each with label.csv and PNGs, in "
                              f"the root or data/) under {empty}; found ['images']")
    with pytest.raises(SourceLayoutError, match=r"^[^\n]*: expected fer2013new\.csv \(with fer2013\.csv\) under "):
        run("ferplus", empty, variant="csv")


# ------------------------------------------------------------------------------------------- issue 16: shared rules


def test_generated_layout_broken_pngs_are_image_undecodable(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    """Every listed PNG found gets the shared signature check (it checked existence and 0 bytes only): an HTML page
    saved as .png and a truncated PNG are image_undecodable with the detail in meta, beside the vote verdict
    (ferplus_unknown stays first); one warning per label.csv names the first file and the fix."""
    root = tmp_path / "FERPlus"
    expected = _generated(root)
    write_broken(root / "FER2013Train" / "fer0000001.png", "html")
    write_broken(root / "FER2013Train" / "fer0000000.png", "truncated")
    write_broken(root / "FER2013Valid" / "fer0000002.png", "truncated")
    expected["src/FER2013Train/fer0000001"] |= {"reasons": ["image_undecodable"], "emotion": "neutral"}
    expected["src/FER2013Train/fer0000000"]["reasons"] = ["ferplus_unknown", "image_undecodable"]
    expected["src/FER2013Valid/fer0000002"] |= {"reasons": ["image_undecodable"]}
    with caplog.at_level(logging.WARNING):
        by_id = check(run("ferplus", root), expected)
    assert by_id["src/FER2013Train/fer0000001"].meta["image_error"].startswith("not an image file (starts")
    assert by_id["src/FER2013Train/fer0000000"].meta["image_error"] == "truncated PNG (no IEND chunk)"
    assert by_id["src/FER2013Valid/fer0000002"].meta["image_error"] == "truncated PNG (no IEND chunk)"
    assert by_id["src/FER2013Test/fer0000007"].meta["image_error"] == "zero-byte file"
    assert "image_error" not in by_id["src/FER2013Train/fer0000003"].meta
    label = root / "FER2013Train" / "label.csv"
    assert (f"{label}: 2 image file(s) not usable (first: {root / 'FER2013Train' / 'fer0000000.png'}: truncated PNG "
            "(no IEND chunk)); their records are excluded (image_undecodable); re-extract those files from the "
            "release archive") in caplog.text


def test_generated_layout_a_png_listed_twice_is_one_record_or_one_label_conflict(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """label.csv naming a PNG twice: with the same votes and rect, one record (the first listing, the repeat noted
    in meta and counted); with other votes, one excluded label_conflict record listing both lines and votes. The
    ids and their order are the fixture's, nothing added."""
    root = tmp_path / "FERPlus"
    expected = _generated(root)
    label = root / "FER2013Train" / "label.csv"
    label.write_bytes(label.read_bytes() + b'fer0000001.png,"(0, 0, 48, 48)",6,0,1,1,0,0,0,0,2,0\r\n'  # line 5
                                           b'fer0000003.png,"(2, 1, 46, 47)",0,0,0,10,0,0,0,0,0,0\r\n')  # line 6
    expected["src/FER2013Train/fer0000003"] = {"split": "train", "emotion": None, "reasons": ["label_conflict"]}
    stage = FerPlus({"source": "src", "root": str(root)})
    with caplog.at_level(logging.WARNING):
        recs = list(stage.iter_records())
    by_id = check(recs, expected)
    assert [r.id for r in recs] == list(expected)
    same = by_id["src/FER2013Train/fer0000001"]
    assert same.reasons == [] and same.meta["line"] == 2 and same.meta["also_listed_at"] == [{"line": 5}]
    conflict = by_id["src/FER2013Train/fer0000003"].meta["label_conflict"]
    assert [(c["line"], c["emotion"], c["meta.votes"]) for c in conflict] == [
        (3, "anger", [0, 0, 0, 0, 10, 0, 0, 0, 0, 0]), (6, "sadness", [0, 0, 0, 10, 0, 0, 0, 0, 0, 0])]
    assert stage.stats.counters["duplicate_rows"] == 1
    assert "src/FER2013Train/fer0000003: listed 2 times with different emotion" in caplog.text


def test_csv_layout_ids_are_rows_so_a_repeated_image_name_is_two_records(tmp_path: Path) -> None:
    """The CSV layout joins by row: a name repeated in fer2013new.csv names two different fer2013.csv rows, two
    records with their own ids (fer2013#<row>), no duplicate to resolve."""
    root, expected = build_ferplus(tmp_path)
    new = root / "fer2013new.csv"
    new.write_text(new.read_text().replace("fer0000004.png", "fer0000003.png"))
    expected["src/fer2013#5"]["name"] = "fer0000003.png"
    stage = FerPlus({"source": "src", "root": str(root)})
    check(list(stage.iter_records()), expected)
    assert "duplicate_rows" not in stage.stats.counters
