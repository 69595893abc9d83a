from pathlib import Path

import pytest

from tests.helpers import drop_column, set_cell
from trainable.data.annotations import EVENT_COLUMNS, AnnotationError
from trainable.data.layouts import dataset, load_annotations
from trainable.data.layouts.rfcx import ANNOTATION_COLUMNS, RFCx, read_files


def load_error(data_dir: Path) -> str:
    with pytest.raises(AnnotationError) as caught:
        dataset("rfcx").validate(data_dir)
    message = str(caught.value)
    assert "\n" not in message
    if "audio file" not in message and "after the clip end" not in message:  # audio: the cache build's check
        with pytest.raises(AnnotationError) as loading:  # what every trial reads fails the same way
            load_annotations(data_dir)
        assert str(loading.value) == message
    return message


def test_valid_dataset_loads(synth_dir):
    dataset("rfcx").validate(synth_dir)
    files = read_files(synth_dir)
    assert list(files.tp.columns) == ["line", *ANNOTATION_COLUMNS]
    assert files.tp.species_id.dtype.kind == "i"
    assert files.tp.line.iloc[0] == 2  # the header is line 1
    annotations = load_annotations(synth_dir)
    assert annotations.n_species == 6  # from sample_submission's s0..s5
    assert list(annotations.tp.columns) == list(EVENT_COLUMNS) and set(annotations.tp.kind) == {"tp"}
    assert annotations.tp.species.dtype.kind == "i" and len(annotations.tp) == len(files.tp)
    assert len(annotations.test_ids) == 6
    assert set(annotations.train_ids) == {p.stem for p in (synth_dir / "train").glob("*.flac")}


def test_missing_column(data_copy):
    drop_column(data_copy / "train_tp.csv", "t_max")
    assert load_error(data_copy).startswith("train_tp.csv line 1: missing column t_max")


def test_species_out_of_range(data_copy):
    rid = set_cell(data_copy / "train_tp.csv", 4, "species_id", "6")
    message = load_error(data_copy)
    assert message.startswith("train_tp.csv line 4: species_id outside [0, 6) (6)") and rid in message


def test_negative_species_in_fp_file(data_copy):
    set_cell(data_copy / "train_fp.csv", 3, "species_id", "-1")
    assert load_error(data_copy).startswith("train_fp.csv line 3: species_id outside [0, 6)")


def test_t_min_not_before_t_max(data_copy):
    set_cell(data_copy / "train_tp.csv", 2, "t_min", "9.5")
    set_cell(data_copy / "train_tp.csv", 2, "t_max", "9.5")
    assert load_error(data_copy).startswith("train_tp.csv line 2: t_min >= t_max")


def test_time_after_the_clip_end(data_copy):
    set_cell(data_copy / "train_tp.csv", 3, "t_max", "12.5")  # clips are 12 s long
    assert load_error(data_copy).startswith("train_tp.csv line 3: t_max is after the clip end")


def test_time_before_the_clip_start(data_copy):
    set_cell(data_copy / "train_fp.csv", 2, "t_min", "-0.5")
    assert load_error(data_copy).startswith("train_fp.csv line 2: t_min is before the clip start")


def test_not_a_number(data_copy):
    set_cell(data_copy / "train_tp.csv", 5, "f_min", "low")
    assert load_error(data_copy).startswith("train_tp.csv line 5: f_min is not a number (low)")


def test_annotated_recording_without_audio(data_copy):
    rid = set_cell(data_copy / "train_tp.csv", 2, "recording_id", "deadbeef0")
    message = load_error(data_copy)
    assert message.startswith("train_tp.csv line 2: recording 'deadbeef0' has no audio file")
    assert rid == "deadbeef0" and "deadbeef0.flac" in message


def test_test_recording_without_audio(data_copy):
    victim = next((data_copy / "test").glob("*.flac"))
    victim.unlink()
    assert victim.stem in load_error(data_copy)


def test_missing_file(data_copy):
    (data_copy / "train_fp.csv").unlink()
    assert load_error(data_copy).startswith("train_fp.csv: not found")


def test_several_bad_lines_are_counted(data_copy):
    for line in (2, 3, 4):
        set_cell(data_copy / "train_tp.csv", line, "species_id", "40")
    assert "[and 2 more line(s) like it]" in load_error(data_copy)


def test_submission_species_columns_must_be_in_order(data_copy):
    path = data_copy / "sample_submission.csv"
    text = path.read_text().splitlines()
    text[0] = text[0].replace("s1,s2", "s2,s1")
    path.write_text("\n".join(text) + "\n")
    assert load_error(data_copy).startswith("sample_submission.csv line 1: species columns")


def test_a_first_row_with_a_field_too_many_names_its_line_not_shifted_columns(data_copy):
    path = data_copy / "train_tp.csv"
    lines = path.read_text().splitlines()
    lines[1] += ",extra"  # pandas took the first column as the index and blamed every line
    path.write_text("\n".join(lines) + "\n")
    assert load_error(data_copy) == "train_tp.csv line 2: 8 fields, the header has 7 (a comma too many?)"


def test_a_species_outside_the_count_names_where_the_count_comes_from(data_copy):
    # A submission with fewer species columns than the annotations use: the count is the
    # submission's, which the line must name (it blamed train_tp.csv alone).
    path = data_copy / "sample_submission.csv"
    rows = [line.split(",") for line in path.read_text().splitlines()]
    path.write_text("\n".join(",".join(row[:5]) for row in rows) + "\n")  # recording_id, s0..s3
    message = load_error(data_copy)
    assert message.startswith("train_tp.csv line ") and " species_id outside [0, 4) (" in message
    assert message.endswith("; sample_submission.csv has 4 species columns, s0..s3")
    path.unlink()
    set_cell(data_copy / "train_tp.csv", 2, "species_id", "30")
    assert load_error(data_copy).endswith("; RFCx's 24 species (no sample_submission.csv to count them from)")


def test_copied_rows_are_named_with_their_lines_and_count(data_copy):
    layout = RFCx()
    assert layout.warnings(data_copy) == []
    tp = data_copy / "train_tp.csv"
    lines = tp.read_text().splitlines()
    tp.write_text("\n".join([*lines[:4], lines[1], *lines[4:], lines[3], lines[1]]) + "\n")
    rid, species, _, t_min, _, t_max, _ = lines[1].split(",")
    n = len(lines)
    # the copies are lines 5, n + 2 and n + 3 (of lines 2, 4 and 2); numbers compare as numbers
    assert layout.warnings(data_copy) == [
        f"train_tp.csv line 5 repeats line 2 exactly (recording {rid!r}, species {species},"
        f" {float(t_min):g}-{float(t_max):g} s) [3 copied lines: 5, {n + 2}, {n + 3}]: kept, as the reference read"
        f" them; a copy changes the fold labels, the class weights and the crops, so remove them if they are a"
        f" mistake"]
    fp = data_copy / "train_fp.csv"
    tp.write_text("\n".join(lines) + "\n")
    fp_lines = fp.read_text().splitlines()
    fp.write_text("\n".join([*fp_lines, fp_lines[1].replace(",", ", ")]) + "\n")  # spaces: the same numbers
    [message] = layout.warnings(data_copy)
    assert message.startswith(f"train_fp.csv line {len(fp_lines) + 1} repeats line 2 exactly")
    assert message.endswith(f"s) [1 copied line: {len(fp_lines) + 1}]: kept, as the reference read them; a copy"
                            f" changes which fp event the negative crops are centred on, so remove it if it is a"
                            f" mistake")
