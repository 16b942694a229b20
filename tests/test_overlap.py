"""The overlap graph links exactly the blobs whose pixels meet between consecutive frames."""

import numpy as np

from services.assembler.overlap import frame_pair_links, link_degrees, overlap_links
from tests.blob_scenes import crossing_scene, table_from_discs


def links_set(links):
    return {tuple(int(v) for v in pair) for pair in links}


def test_blobs_that_move_onto_themselves_are_linked_and_far_ones_are_not():
    table = table_from_discs([[(30, 30, 6), (100, 30, 6)], [(33, 31, 6), (100, 60, 6)]])
    # rows: frame 0 -> 0, 1; frame 1 -> 2, 3 (components are labelled in raster order)
    assert links_set(overlap_links(table)) == {(0, 2)}


def test_touching_bounding_boxes_without_touching_pixels_are_not_linked():
    # Two discs on a diagonal: their boxes share a corner region, their pixels do not.
    table = table_from_discs([[(30, 30, 8)], [(44, 44, 8)]])
    x0a, y0a, x1a, y1a = table.bbox[0]
    x0b, y0b, _, _ = table.bbox[1]
    assert x0b < x1a and y0b < y1a  # the boxes do intersect
    assert len(overlap_links(table)) == 0


def test_a_merge_links_both_animals_to_the_crossing_and_a_split_links_it_to_both():
    frames = [[(30, 30, 6), (50, 30, 6)], [(36, 30, 6), (44, 30, 6)], [(30, 30, 6), (50, 30, 6)]]
    table = table_from_discs(frames)
    assert list(np.bincount(table.frame)) == [2, 1, 2]
    assert links_set(overlap_links(table)) == {(0, 2), (1, 2), (2, 3), (2, 4)}
    n_previous, n_next = link_degrees(overlap_links(table), len(table))
    assert n_previous[2] == 2 and n_next[2] == 2


def test_linking_chunk_by_chunk_gives_the_same_graph_as_linking_the_whole_video():
    frames, _ = crossing_scene(n_frames=40)
    table = table_from_discs(frames)
    whole = overlap_links(table)
    starts = table.frame_slices(0, 41)
    pieces = [overlap_links(table.select(np.arange(starts[0], starts[20])))]
    border_row = int(starts[19])  # first blob of the last frame of the first chunk
    pieces.append(overlap_links(table.select(np.arange(border_row, starts[40])), row_offset=border_row))
    assert links_set(np.concatenate(pieces)) == links_set(whole)
    assert len(whole) > 100


def test_frame_pair_links_takes_any_two_frames_rows():
    table = table_from_discs([[(30, 30, 6)], [(32, 30, 6)]])
    assert links_set(frame_pair_links(table, np.array([0]), np.array([1]))) == {(0, 1)}
    assert len(frame_pair_links(table, np.array([0]), np.array([], np.int64))) == 0

