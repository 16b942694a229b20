"""Exclusive arenas: blobs labelled by ROI region, and tracking that never mixes two regions."""

import numpy as np
import pytest

from services.assembler.assembly import count_animals
from services.assembler.overlap import overlap_links
from services.assembler.regions import track_regions
from shoal.roi import RegionError, animals_per_region, blob_regions, roi_mask, roi_regions
from shoal.segmentation import segment_frame
from tests.blob_scenes import table_from_discs, true_animals
from tests.test_track import TruthIdentifier


def test_each_blob_is_labelled_with_the_region_it_lies_in():
    width, height = 200, 100
    rois = ["+ Polygon [[1, 1], [97, 1], [97, 98], [1, 98]]", "+ Polygon [[101, 1], [198, 1], [198, 98], [101, 98]]"]
    mask = roi_mask(rois, width, height)
    frame = np.full((height, width), 200, np.uint8)
    frame[40:50, 10:30] = 20  # left arena
    frame[10:20, 150:170] = 20  # right arena
    frame[70:90, 170:196] = 20  # right arena, a "C": centroid in the gap of the body...
    frame[74:86, 174:196] = 200
    frame[60:70, 90:110] = 20  # ...and a body across the wall between arenas: cut in two blobs
    table = segment_frame(frame, 0, (0, 100), (10, 10_000), roi=mask)
    regions = blob_regions(table, roi_regions(mask))
    assert regions.dtype == np.int32 and len(regions) == len(table) == 5
    expected = np.where(table.centroid[:, 0] < 99, 0, 1)
    assert regions.tolist() == expected.tolist()
    c_shape = np.flatnonzero(table.bbox[:, 0] == 170)[0]
    assert regions[c_shape] == 1


def _two_arena_scene(n_frames=90):
    """Three discs per arena (left x < 150, right x > 150); in each arena two of them meet."""
    frames = []
    for t in range(n_frames):
        left = [(20 + 1.2 * t, 60, 7), (128 - 1.2 * t, 62, 7), (40, 150 + 0.5 * t, 7)]
        right = [(170 + 1.2 * t, 100, 7), (280 - 1.2 * t, 102, 7), (200, 30 + 0.8 * t, 7)]
        frames.append(left + right)
    return frames


def _scene_table():
    frames = _two_arena_scene()
    table = table_from_discs(frames)
    table.region = (table.centroid[:, 0] > 150).astype(np.int32)
    return frames, table


def test_tracking_per_region_keeps_identities_inside_their_arena():
    frames, table = _scene_table()
    truth = true_animals(frames, table)
    identifier = TruthIdentifier(truth, {0: 2, 1: 0, 2: 1, 3: 1, 4: 2, 5: 0}, noise=0.3)
    links = overlap_links(table)
    result = track_regions(table, links, len(frames), [3, 3], identifier)

    assert result.n_animals == 6 and result.trajectories.shape == (len(frames), 6, 2)
    assert len(identifier.requests) == 2 and all(r.n_animals == 3 for r in identifier.requests)
    for request, region in zip(identifier.requests, (0, 1), strict=True):  # ids are rows of the whole table
        assert set(table.region[request.fragment_ids]) == {region}
    seen = result.blob_identity >= 0
    assert np.all(np.where(table.region[seen] == 0, result.blob_identity[seen] < 3, result.blob_identity[seen] >= 3))
    # one identity is one true animal, whichever label the network used
    for identity in range(6):
        animals = {a for i in np.flatnonzero(result.blob_identity == identity) for a in truth[i]}
        assert len(animals) == 1, (identity, animals)
    assert np.isfinite(result.trajectories[:, :, 0]).mean() > 0.95


def test_animals_per_region_from_frames_showing_everyone():
    _, table = _scene_table()
    assert animals_per_region(table, 90, 2, 6) == [3, 3]
    assert animals_per_region(table, 90, 2, 6, given=[3, 3]) == [3, 3]
    assert animals_per_region(table, 90, 2, 0) == [3, 3]  # without identities: the most blobs seen
    with pytest.raises(RegionError, match=r"animals_per_roi: the regions hold \[3, 3\].*not number_of_animals = 7"):
        animals_per_region(table, 90, 2, 7)
    with pytest.raises(RegionError, match="animals_per_roi: 3 counts for 2 regions"):
        animals_per_region(table, 90, 2, 6, given=[2, 2, 2])


def test_the_assembler_takes_the_counts_the_probe_recorded_and_counts_only_without_a_number():
    _, table = _scene_table()
    assert count_animals(table, 90, {"n_animals": 6, "n_regions": 2, "animals_per_region": [2, 4]}, True) == (6, [2, 4])
    assert count_animals(table, 90, {"n_animals": 5}, False) == (5, None)
    # tracking without identities and no number: a slot for the most blobs a frame (a region) holds
    assert count_animals(table, 90, {"n_animals": 0, "n_regions": 2, "animals_per_region": None}, True) == (6, [3, 3])
    assert count_animals(table, 90, {"n_animals": 0}, False) == (6, None)


def test_the_probe_counts_the_animals_of_each_arena_once_and_stops_when_they_cannot_add_up(tmp_path):
    """Three fish in one tank and two in the other: the split is read from the sampled frames, so a
    wrong number of animals stops the job at the probe, not after the whole video is segmented."""
    from services.segmenter.work import SegmentationError, probe
    from shoal.params import TrackingParams
    from shoal.sim import SimulationConfig, write_simulation
    from shoal.video import probe_video

    config = SimulationConfig(n_animals=5, n_frames=60, preset="fish", seed=3, n_arenas=2)
    files = write_simulation(config, tmp_path / "v")
    info = probe_video([str(files["video"])])

    def probed(**given):
        params = TrackingParams(video_paths=[str(files["video"])], exclusive_rois=True,
                                roi_list=config.arena_rois(), **given).validate()
        return probe(info, params, tmp_path)

    truth = np.bincount(np.load(files["ground_truth"])["arena"]).tolist()
    found = probed(number_of_animals=5)
    assert (found.n_regions, found.animals_per_region, found.n_animals) == (2, truth, 5)
    given = probed(number_of_animals=5, animals_per_roi=truth[::-1])
    assert given.animals_per_region == truth[::-1]
    unknown = probed(track_wo_identities=True)  # only the whole video can tell: the assembler counts
    assert (unknown.animals_per_region, unknown.n_animals) == (None, 0)
    same = {"intensity_ths": found.intensity_ths, "area_ths": found.area_ths, "use_bkg": found.background is not None}
    with pytest.raises(SegmentationError, match=r"animals_per_roi: the regions hold .* not number_of_animals = 12"):
        probed(number_of_animals=12, **same)  # no sampled frame shows 12 blobs, nor can the regions' usual counts
