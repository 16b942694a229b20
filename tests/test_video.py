import cv2
import numpy as np
import pytest

from shoal.chunks import chunk_ranges
from shoal.video import (
    LOSSLESS_SUFFIX,
    UNCOMPRESSED_FOURCC,
    VideoError,
    probe_video,
    read_frame,
    read_frames,
    sample_frames,
    write_video,
)

H, W = 48, 64


def random_frames(n: int, seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width), dtype=np.uint8)


@pytest.fixture
def session(tmp_path):
    """Two files played in order: 40 frames at 25 fps, then 20 frames at 30 fps."""
    frames = random_frames(60)
    paths = [
        write_video(tmp_path / f"part{i}{LOSSLESS_SUFFIX}", chunk, fps)
        for i, (chunk, fps) in enumerate([(frames[:40], 25), (frames[40:], 30)])
    ]
    return probe_video([str(p) for p in paths]), frames


def test_single_file_reads_back_bit_identical(tmp_path):
    frames = random_frames(30)
    path = write_video(tmp_path / "v.avi", frames, 25)
    info = probe_video([str(path)])
    assert (info.width, info.height, info.n_frames, info.fps) == (W, H, 30, 25.0)
    got = list(read_frames(info, 7, 19))
    assert [index for index, _ in got] == list(range(7, 19))
    assert all(frame.dtype == np.uint8 and frame.shape == (H, W) for _, frame in got)
    assert np.array_equal(np.stack([frame for _, frame in got]), frames[7:19])
    assert np.array_equal(read_frame(info, 29), frames[29])


def test_uncompressed_video_reads_back_bit_identical(tmp_path):
    frames = random_frames(10)
    info = probe_video([str(write_video(tmp_path / "raw.avi", frames, 25, fourcc=UNCOMPRESSED_FOURCC))])
    assert np.array_equal(sample_frames(info, range(10)), frames)


def test_two_files_form_one_session(session):
    info, frames = session
    assert info.n_frames == 60
    assert info.file_frames == [40, 20]
    assert info.file_starts == [0, 40]
    assert info.fps == pytest.approx(27.5)
    assert any("frame rates" in message for message in info.warnings)
    got = np.stack([frame for _, frame in read_frames(info, 45, 60)])
    assert np.array_equal(got, frames[45:60])
    assert np.array_equal(read_frame(info, 40), frames[40])
    assert np.array_equal(read_frame(info, 39), frames[39])


def test_range_spanning_two_files_is_refused(session):
    info, _ = session
    with pytest.raises(ValueError, match="span two files"):
        list(read_frames(info, 35, 45))
    with pytest.raises(ValueError, match="outside the session"):
        list(read_frames(info, 60, 61))


def test_sample_frames_any_order_and_duplicates(session):
    info, frames = session
    indices = [55, 3, 3, 4, 39, 40, 59, 0, 30]
    got = sample_frames(info, indices)
    assert got.shape == (len(indices), H, W)
    assert np.array_equal(got, frames[indices])


def test_chunks_never_span_files_and_cover_tracked_frames(session):
    info, _ = session
    chunks = chunk_ranges(info, frames_per_chunk=15)
    assert chunks == [(0, 13), (13, 26), (26, 40), (40, 50), (50, 60)]
    chunks = chunk_ranges(info, frames_per_chunk=500, intervals=[(5, 12), (10, 45), (50, 100)])
    assert chunks == [(5, 40), (40, 45), (50, 60)]


def test_chunks_respect_size_and_intervals(session):
    info, _ = session
    intervals = [(2, 9), (20, 57)]
    chunks = chunk_ranges(info, frames_per_chunk=6, intervals=intervals)
    covered = np.concatenate([np.arange(a, b) for a, b in chunks])
    assert np.array_equal(covered, np.r_[2:9, 20:57])
    for start, stop in chunks:
        assert info.file_of(start) == info.file_of(stop - 1)
        assert 1 <= stop - start <= 7
    with pytest.raises(ValueError):
        chunk_ranges(info, intervals=[(10, 10)])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(VideoError, match=r"cannot open video .*nope\.avi: file does not exist"):
        probe_video([str(tmp_path / "nope.avi")])


def test_random_bytes_are_not_a_video(tmp_path):
    path = tmp_path / "garbage.avi"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(VideoError, match="garbage.avi: OpenCV cannot decode it"):
        probe_video([str(path)])


def test_mismatched_sizes_are_reported(tmp_path):
    a = write_video(tmp_path / "a.avi", random_frames(3), 25)
    b = write_video(tmp_path / "b.avi", random_frames(3, height=50, width=50), 25)
    with pytest.raises(VideoError, match="different sizes: a.avi is 64x48, b.avi is 50x50"):
        probe_video([str(a), str(b)])


def test_colour_video_is_read_as_grey(tmp_path):
    colour = np.random.default_rng(2).integers(0, 256, (5, H, W, 3), dtype=np.uint8)
    path = str(tmp_path / "colour.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"FFV1"), 25, (W, H), isColor=True)
    for frame in colour:
        writer.write(frame)
    writer.release()
    info = probe_video([path])
    expected = cv2.cvtColor(colour[3], cv2.COLOR_BGR2GRAY)
    assert np.array_equal(read_frame(info, 3), expected)


def test_seeking_in_inter_coded_video_matches_sequential_decoding(tmp_path):
    """mp4v has key frames and predicted frames: a seek must land on the same frame a full decode sees."""
    path = str(tmp_path / "lossy.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25, (W, H), isColor=False)
    y = np.arange(H)[:, None]
    for t in range(60):
        writer.write(((np.arange(W)[None, :] * 4 + y + 3 * t) % 256).astype(np.uint8))
    writer.release()
    info = probe_video([path])
    sequential = np.stack([frame for _, frame in read_frames(info, 0, info.n_frames)])
    assert np.array_equal(np.stack([frame for _, frame in read_frames(info, 37, 45)]), sequential[37:45])
    assert np.array_equal(sample_frames(info, [50, 5, 31]), sequential[[50, 5, 31]])


def test_truncated_recording_is_shortened_with_a_warning(tmp_path):
    path = write_video(tmp_path / "cut.avi", random_frames(60), 25)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    info = probe_video([str(path)])
    assert 0 < info.n_frames < 60
    assert any("cut short" in message for message in info.warnings)
    last = read_frame(info, info.n_frames - 1)
    assert last.shape == (H, W)


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(VideoError, match="no frames"):
        write_video(tmp_path / "empty.avi", [], 25)
    with pytest.raises(VideoError, match="grey uint8"):
        write_video(tmp_path / "float.avi", [np.zeros((H, W), dtype=float)], 25)
