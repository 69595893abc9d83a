"""A dataset of the real competition's size for the host-side benchmarks and the GPU check,
without audio.

The host side of a trial reads the log-mel cache and the annotations only, so this writes
exactly those: the synthetic generator's annotations (datatools.synth, its real statistics) for
60 s clips, and a cache of random log-mel arrays of the real shape (128 mels x 3751 frames,
float16, about 1 MB each). 2,200 train recordings give the real 1,100 tp recordings, with their
fp recordings beside them; about 2.1 GB, written once (about 20 s) into the user's cache. Each
array is recorded as imported without audio (trainable.data.cache's NO_AUDIO), as
datatools.import_arrays records arrays made elsewhere, so a search accepts the cache
(search.datadir.check_cached); there are no test recordings.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from datatools import synth
from datatools.builtin import default_data_dir
from trainable.atomic import atomic_write_text
from trainable.data.cache import DEFAULT_CACHE_NAME, NO_AUDIO, FeatureConfig, LogMelCache, source_key
from trainable.data.layouts.rfcx import FP_FILE, TP_FILE

NAME = "host-bench-v2"  # change when what is written changes (v2: the arrays' NO_AUDIO records)
RECORDINGS = 2200  # train recordings: half with tp rows, as the real 1,132
SPECIES, SECONDS = 24, 60.0
DONE = ".complete"


def real_sized_root(recordings: int = RECORDINGS) -> Path:
    """Where `real_sized_data` writes the dataset of `recordings` train recordings."""
    return default_data_dir().parent / (NAME if recordings == RECORDINGS else f"{NAME}-{recordings}")


def real_sized_data(progress: bool = True, recordings: int = RECORDINGS) -> Path:
    """The dataset's directory (the RFCx layout's CSVs and DATA/logmel), made on first use.

    `recordings` other than the real-sized RECORDINGS make a smaller dataset of its own name
    (the GPU check's time budget, the tests). It is built in a temporary directory and renamed
    into place, so a killed build leaves nothing that looks complete.
    """
    root = real_sized_root(recordings)
    if (root / DONE).is_file():
        return root
    if progress:
        print(f"# writing the real-sized benchmark data to {root} (once; about {recordings / 1050:.1f} GB)",
              flush=True)
    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    features = FeatureConfig()
    _, train, _ = synth.planned(recordings, 0, SPECIES, SECONDS, features.sample_rate, seed=0)
    building.mkdir(parents=True)
    for role, name in (("tp", TP_FILE), ("fp", FP_FILE)):
        atomic_write_text(building / name, synth.annotations(train, role, features.sample_rate).to_csv(index=False))
    cache = LogMelCache.create(building / DEFAULT_CACHE_NAME, features)
    frames = int(SECONDS * features.frames_per_second) + 1  # 3751, as the real clips
    rng = np.random.default_rng(0)
    for recording in train:  # log-mel-like values in dB; their content does not matter here
        log_mel = rng.normal(-50.0, 12.0, size=(features.n_mels, frames)).astype(np.float16)
        cache.save("train", recording.rec_id, log_mel)
    cache.record_sources({source_key("train", recording.rec_id): NO_AUDIO for recording in train})
    (building / DONE).touch()
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)
    return root
