from pathlib import Path

import pytest

from tests.helpers import drop_column, set_cell
from trainable.data.annotations import EVENT_COLUMNS, AnnotationError
from trainable.data.layouts import dataset, load_annotations
from trainable.data.layouts.rfcx import ANNOTATION_COLUMNS, read_files


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
