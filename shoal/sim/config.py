"""SimulationConfig: what to simulate, checked once when it is made.

Every option is validated here, so the renderer, the writers and `shoal simulate` can trust it; it
also derives what they report (the video's file name, each arena's ROI, the hard-recording options).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from shoal.sim.presets import PRESET_NAMES, Preset, presets

CODECS = ("ffv1", "mjpg", "h264", "mp4v")
"""Video codecs of write_simulation: FFV1 (lossless, the default), Motion-JPEG at a JPEG quality,
H.264 (through PyAV) at a bitrate or CRF 23, MPEG-4 part 2 at OpenCV's default quality."""
VIDEO_SUFFIX = {"ffv1": ".avi", "mjpg": ".avi", "h264": ".mp4", "mp4v": ".mp4"}
TANKS = ("circle", "rectangle")


@dataclass
class SimulationConfig:
    """What to simulate. width/height default to the preset's frame size (times n_arenas in width).

    ``n_arenas`` tanks stand side by side, each a column of the frame; animals are shared out as
    evenly as possible (the first arenas take the remainder) and numbered arena by arena.
    ``marking_seed`` (default: ``seed``) draws the animals' bodies, markings and the look, so two
    videos with one marking_seed and different seeds show the same individuals moving differently.
    """

    n_animals: int = 4
    n_frames: int = 1000
    width: int | None = None
    height: int | None = None
    preset: str = "fish"
    seed: int = 0
    fps: float = 30.0
    always_touching: bool = False
    """Keep at least one group of animals touching in every frame, so that no frame shows every
    animal apart: the video has no global fragment (the case idtracker.ai's accumulation cannot
    start from, and the contrastive route of Torrents et al. 2025 must handle). Needs 4 animals."""
    n_arenas: int = 1
    marking_seed: int | None = None
    # Ways real recordings are harder; every default leaves the video as it was.
    body_length: float | None = None
    """Median body length in px (individuals vary +-3 % around it), instead of the preset's range."""
    schooling: float = 0.0
    """0..1: how strongly free animals turn towards and align with their neighbours (1: most of them
    within 1-2 body lengths of another most of the time). Engineered crossings still happen."""
    resting: float = 0.0
    """0..0.9: fraction of the time each animal sits still, in rests of 20-120 frames."""
    dark_ends: float = 0.0
    """0..0.45: fraction of the frame width at the left and right ends that darkens towards the edge,
    down to 4 % of the light at the tank's end walls, so animals there fade into the wall. Makes the
    tank a rectangle unless ``tank`` says otherwise."""
    vignette: float = 0.0
    """0..0.95: light lost in the corners (0.5: corners at half the centre's light), falling off as r^2."""
    light_gradient: float = 0.0
    """0..1.5: light difference across the frame in a random direction, plus broad brighter and
    darker patches (0.4: one side 40 % brighter than the other)."""
    debris: int = 0
    """Number of specks of dust, hairs and animal-sized bits on the floor, some darker and some
    lighter than the animals, some lighter than the floor; about one in seven drifts slowly."""
    light_animals: bool = False
    """Light animals on a dark floor: every grey level of the scene is mirrored (255 - level)."""
    mixed_coats: bool = False
    """Every other animal light, the others dark, on a mid-grey floor (a white and a black mouse):
    no one-sided intensity range shows them all."""
    tank: str | None = None
    """'circle' or 'rectangle'; default: drawn per seed (7 in 10 circles), a rectangle with dark_ends."""
    codec: str = "ffv1"
    """One of CODECS: how write_simulation encodes the video (the in-memory frames are uncompressed)."""
    bitrate: float | None = None
    """kbit/s of an h264 video (default: constant quality, CRF 23)."""
    quality: int | None = None
    """JPEG quality 1-100 of an mjpg video (default 75)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESET_NAMES:
            raise ValueError(f"preset must be one of {', '.join(PRESET_NAMES)}, not {self.preset!r}")
        if self.n_animals < 1:
            raise ValueError(f"need at least one animal, got {self.n_animals}")
        if self.n_frames < 1:
            raise ValueError(f"need at least one frame, got {self.n_frames}")
        if self.mixed_coats and self.light_animals:
            raise ValueError("mixed_coats already has light and dark animals: leave out light_animals")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.always_touching and self.n_animals < 4:
            raise ValueError("always_touching needs at least 4 animals: one pair may part only once "
                             f"another pair has met, got {self.n_animals}")
        if not 1 <= self.n_arenas <= self.n_animals:
            raise ValueError(f"need 1 to n_animals arenas, got {self.n_arenas} for {self.n_animals} animals")
        self._check_conditions()
        preset = self.animal_preset()
        self.width = preset.width * self.n_arenas if self.width is None else int(self.width)
        self.height = preset.height if self.height is None else int(self.height)
        if min(self.width // self.n_arenas, self.height) < 4 * preset.body_length[1]:
            where = "frame" if self.n_arenas == 1 else f"frame split into {self.n_arenas} arenas"
            raise ValueError(
                f"a {self.width}x{self.height} {where} is too small for {self.preset} "
                f"(needs at least {int(4 * preset.body_length[1])} px per side and arena)"
            )
        if self.codec == "h264" and (self.width % 2 or self.height % 2):
            raise ValueError(f"--codec h264 needs an even width and height, not {self.width}x{self.height}")

    def _check_conditions(self) -> None:
        if self.body_length is not None and not 6.0 <= self.body_length <= 400.0:
            raise ValueError(f"body length must be 6 to 400 px, got {self.body_length}")
        for name, value, top in (("schooling", self.schooling, 1.0), ("resting", self.resting, 0.9),
                                 ("dark ends", self.dark_ends, 0.45), ("vignette", self.vignette, 0.95),
                                 ("light gradient", self.light_gradient, 1.5)):
            if not 0.0 <= value <= top:
                raise ValueError(f"{name} must be 0 to {top}, got {value}")
        if self.debris < 0:
            raise ValueError(f"debris must be a count of 0 or more, got {self.debris}")
        if self.tank is not None and self.tank not in TANKS:
            raise ValueError(f"tank must be one of {', '.join(TANKS)}, not {self.tank!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {self.codec!r}")
        if self.bitrate is not None and (self.codec != "h264" or self.bitrate <= 0):
            raise ValueError("--bitrate (kbit/s, > 0) applies to --codec h264 only")
        if self.quality is not None and (self.codec != "mjpg" or not 1 <= self.quality <= 100):
            raise ValueError("--quality (JPEG quality 1-100) applies to --codec mjpg only")

    def animal_preset(self) -> Preset:
        """The preset, with its body-length range narrowed to ``body_length`` when one is given."""
        preset = presets()[self.preset]
        if self.body_length is None:
            return preset
        return replace(preset, body_length=(float(self.body_length), float(self.body_length)))

    def tank_shape(self) -> str | None:
        """'circle', 'rectangle', or None for a shape drawn per seed."""
        return self.tank or ("rectangle" if self.dark_ends > 0 else None)

    def video_name(self) -> str:
        """File name write_simulation gives the video: .avi for FFV1 and MJPG, .mp4 for H.264 and MPEG-4."""
        return "video" + VIDEO_SUFFIX[self.codec]

    def conditions(self) -> dict:
        """The hard-recording options that differ from their defaults (empty for a default video)."""
        out = {}
        for name in ("body_length", "schooling", "resting", "dark_ends", "vignette", "light_gradient", "debris",
                     "light_animals", "mixed_coats", "tank", "codec", "bitrate", "quality"):
            value, default = getattr(self, name), SimulationConfig.__dataclass_fields__[name].default
            if value != default:
                out[name] = value
        return out

    def arena_sizes(self) -> list[int]:
        """Animals in each arena, arena by arena."""
        base, extra = divmod(self.n_animals, self.n_arenas)
        return [base + (k < extra) for k in range(self.n_arenas)]

    def arena_rois(self) -> list[str]:
        """One ROI string (idtracker.ai syntax) per arena: its column less a 1-2 px border.

        Neighbouring arenas are two pixels apart, so each is its own connected region of the ROI.
        """
        col, h = self.width // self.n_arenas, self.height
        return [f"+ Polygon [[{k * col + 1}, 1], [{(k + 1) * col - 2}, 1], [{(k + 1) * col - 2}, {h - 2}], "
                f"[{k * col + 1}, {h - 2}]]" for k in range(self.n_arenas)]
