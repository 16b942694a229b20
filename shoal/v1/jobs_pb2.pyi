from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState

class TrackingParams(_message.Message):
    __slots__ = ("number_of_animals", "intensity_ths", "area_ths", "roi_list", "use_bkg", "background_subtraction_stat", "tracking_intervals", "track_wo_identities", "exclusive_rois", "resolution_reduction", "id_image_size", "check_segmentation", "trajectories_formats", "method", "seed", "frames_per_episode", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NUMBER_OF_ANIMALS_FIELD_NUMBER: _ClassVar[int]
    INTENSITY_THS_FIELD_NUMBER: _ClassVar[int]
    AREA_THS_FIELD_NUMBER: _ClassVar[int]
    ROI_LIST_FIELD_NUMBER: _ClassVar[int]
    USE_BKG_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_SUBTRACTION_STAT_FIELD_NUMBER: _ClassVar[int]
    TRACKING_INTERVALS_FIELD_NUMBER: _ClassVar[int]
    TRACK_WO_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_ROIS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_REDUCTION_FIELD_NUMBER: _ClassVar[int]
    ID_IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECK_SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FORMATS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PER_EPISODE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    number_of_animals: int
    intensity_ths: _containers.RepeatedScalarFieldContainer[float]
    area_ths: _containers.RepeatedScalarFieldContainer[float]
    roi_list: _containers.RepeatedScalarFieldContainer[str]
    use_bkg: bool
    background_subtraction_stat: str
    tracking_intervals: _containers.RepeatedCompositeFieldContainer[Interval]
    track_wo_identities: bool
    exclusive_rois: bool
    resolution_reduction: float
    id_image_size: int
    check_segmentation: bool
    trajectories_formats: _containers.RepeatedScalarFieldContainer[str]
    method: str
    seed: int
    frames_per_episode: int
    extra: _containers.ScalarMap[str, str]
    def __init__(self, number_of_animals: _Optional[int] = ..., intensity_ths: _Optional[_Iterable[float]] = ..., area_ths: _Optional[_Iterable[float]] = ..., roi_list: _Optional[_Iterable[str]] = ..., use_bkg: _Optional[bool] = ..., background_subtraction_stat: _Optional[str] = ..., tracking_intervals: _Optional[_Iterable[_Union[Interval, _Mapping]]] = ..., track_wo_identities: _Optional[bool] = ..., exclusive_rois: _Optional[bool] = ..., resolution_reduction: _Optional[float] = ..., id_image_size: _Optional[int] = ..., check_segmentation: _Optional[bool] = ..., trajectories_formats: _Optional[_Iterable[str]] = ..., method: _Optional[str] = ..., seed: _Optional[int] = ..., frames_per_episode: _Optional[int] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("video_paths", "params", "output_dir", "name")
    VIDEO_PATHS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    video_paths: _containers.RepeatedScalarFieldContainer[str]
    params: TrackingParams
    output_dir: str
    name: str
    def __init__(self, video_paths: _Optional[_Iterable[str]] = ..., params: _Optional[_Union[TrackingParams, _Mapping]] = ..., output_dir: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SubmitUploadRequest(_message.Message):
    __slots__ = ("job", "file", "data")
    JOB_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job: SubmitJobRequest
    file: UploadFile
    data: bytes
    def __init__(self, job: _Optional[_Union[SubmitJobRequest, _Mapping]] = ..., file: _Optional[_Union[UploadFile, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadFile(_message.Message):
    __slots__ = ("name", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class StageProgress(_message.Message):
    __slots__ = ("stage", "fraction", "done", "total")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    stage: str
    fraction: float
    done: int
    total: int
    def __init__(self, stage: _Optional[str] = ..., fraction: _Optional[float] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "name", "state", "stage", "fraction", "stages", "error", "output_dir", "created_unix", "updated_unix", "figures", "video_paths", "warnings")
    class FiguresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    VIDEO_PATHS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    state: JobState
    stage: str
    fraction: float
    stages: _containers.RepeatedCompositeFieldContainer[StageProgress]
    error: str
    output_dir: str
    created_unix: float
    updated_unix: float
    figures: _containers.ScalarMap[str, float]
    video_paths: _containers.RepeatedScalarFieldContainer[str]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[str] = ..., fraction: _Optional[float] = ..., stages: _Optional[_Iterable[_Union[StageProgress, _Mapping]]] = ..., error: _Optional[str] = ..., output_dir: _Optional[str] = ..., created_unix: _Optional[float] = ..., updated_unix: _Optional[float] = ..., figures: _Optional[_Mapping[str, float]] = ..., video_paths: _Optional[_Iterable[str]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job", "eta_seconds", "final")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    job: Job
    eta_seconds: float
    final: bool
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., eta_seconds: _Optional[float] = ..., final: _Optional[bool] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("job_id", "n_frames", "n_animals", "first_frame", "trajectories", "id_probabilities", "session_json", "attributes_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    N_FRAMES_FIELD_NUMBER: _ClassVar[int]
    N_ANIMALS_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    ID_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    SESSION_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    n_frames: int
    n_animals: int
    first_frame: int
    trajectories: _containers.RepeatedScalarFieldContainer[float]
    id_probabilities: _containers.RepeatedScalarFieldContainer[float]
    session_json: str
    attributes_json: str
    def __init__(self, job_id: _Optional[str] = ..., n_frames: _Optional[int] = ..., n_animals: _Optional[int] = ..., first_frame: _Optional[int] = ..., trajectories: _Optional[_Iterable[float]] = ..., id_probabilities: _Optional[_Iterable[float]] = ..., session_json: _Optional[str] = ..., attributes_json: _Optional[str] = ...) -> None: ...
