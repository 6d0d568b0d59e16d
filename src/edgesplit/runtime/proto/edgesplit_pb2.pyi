from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "scale", "zero_point")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    scale: float
    zero_point: int
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ..., zero_point: _Optional[int] = ...) -> None: ...

class HopTiming(_message.Message):
    __slots__ = ("device", "stage", "received", "compute_start", "compute_end", "serialize_end", "send_start", "send_end", "bytes_out", "batch_size")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_START_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_END_FIELD_NUMBER: _ClassVar[int]
    SERIALIZE_END_FIELD_NUMBER: _ClassVar[int]
    SEND_START_FIELD_NUMBER: _ClassVar[int]
    SEND_END_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    device: str
    stage: int
    received: float
    compute_start: float
    compute_end: float
    serialize_end: float
    send_start: float
    send_end: float
    bytes_out: int
    batch_size: int
    def __init__(self, device: _Optional[str] = ..., stage: _Optional[int] = ..., received: _Optional[float] = ..., compute_start: _Optional[float] = ..., compute_end: _Optional[float] = ..., serialize_end: _Optional[float] = ..., send_start: _Optional[float] = ..., send_end: _Optional[float] = ..., bytes_out: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class MicroBatch(_message.Message):
    __slots__ = ("request_id", "plan_epoch", "tensor", "hops")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    plan_epoch: int
    tensor: Tensor
    hops: _containers.RepeatedCompositeFieldContainer[HopTiming]
    def __init__(self, request_id: _Optional[int] = ..., plan_epoch: _Optional[int] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., hops: _Optional[_Iterable[_Union[HopTiming, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LinkFrame(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    def __init__(self, frame: _Optional[bytes] = ...) -> None: ...

class LinkAck(_message.Message):
    __slots__ = ("request_id", "plan_epoch", "code", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    plan_epoch: int
    code: int
    message: str
    def __init__(self, request_id: _Optional[int] = ..., plan_epoch: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("since_t",)
    SINCE_T_FIELD_NUMBER: _ClassVar[int]
    since_t: float
    def __init__(self, since_t: _Optional[float] = ...) -> None: ...

class DeviceSample(_message.Message):
    __slots__ = ("t", "cpu_percent", "process_cpu_percent", "cpu_freq_mhz", "memory_percent", "rss_mb", "temperature_c", "throttled", "net_bytes_sent", "net_bytes_recv", "power_w", "power_source")
    T_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PROCESS_CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQ_MHZ_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_MB_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    NET_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    NET_BYTES_RECV_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    POWER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    t: float
    cpu_percent: float
    process_cpu_percent: float
    cpu_freq_mhz: float
    memory_percent: float
    rss_mb: float
    temperature_c: float
    throttled: int
    net_bytes_sent: int
    net_bytes_recv: int
    power_w: float
    power_source: str
    def __init__(self, t: _Optional[float] = ..., cpu_percent: _Optional[float] = ..., process_cpu_percent: _Optional[float] = ..., cpu_freq_mhz: _Optional[float] = ..., memory_percent: _Optional[float] = ..., rss_mb: _Optional[float] = ..., temperature_c: _Optional[float] = ..., throttled: _Optional[int] = ..., net_bytes_sent: _Optional[int] = ..., net_bytes_recv: _Optional[int] = ..., power_w: _Optional[float] = ..., power_source: _Optional[str] = ...) -> None: ...

class EpochInfo(_message.Message):
    __slots__ = ("epoch", "stage", "start", "end", "next_hop", "engine", "precision", "wire")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOP_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    stage: int
    start: int
    end: int
    next_hop: str
    engine: str
    precision: str
    wire: str
    def __init__(self, epoch: _Optional[int] = ..., stage: _Optional[int] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., next_hop: _Optional[str] = ..., engine: _Optional[str] = ..., precision: _Optional[str] = ..., wire: _Optional[str] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("name", "protocol_version", "edgesplit_version", "torch_version", "grpc_version", "protobuf_version", "python_version", "clock", "model", "weights_sha256", "num_units", "epochs", "queue_depth", "send_queue_depth", "processed", "samples", "failures", "threads", "cpu_kind", "cpu_model", "onnxruntime_version", "cpu_count", "model_sha256", "model_bytes_received", "stored_models", "memory_budget_bytes", "memory_reserved_bytes", "rss_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EDGESPLIT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRPC_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOBUF_VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    NUM_UNITS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SEND_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    CPU_KIND_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STORED_MODELS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol_version: int
    edgesplit_version: str
    torch_version: str
    grpc_version: str
    protobuf_version: str
    python_version: str
    clock: float
    model: str
    weights_sha256: str
    num_units: int
    epochs: _containers.RepeatedCompositeFieldContainer[EpochInfo]
    queue_depth: int
    send_queue_depth: int
    processed: int
    samples: _containers.RepeatedCompositeFieldContainer[DeviceSample]
    failures: _containers.RepeatedScalarFieldContainer[str]
    threads: int
    cpu_kind: str
    cpu_model: str
    onnxruntime_version: str
    cpu_count: int
    model_sha256: str
    model_bytes_received: int
    stored_models: _containers.RepeatedScalarFieldContainer[str]
    memory_budget_bytes: int
    memory_reserved_bytes: int
    rss_bytes: int
    def __init__(self, name: _Optional[str] = ..., protocol_version: _Optional[int] = ..., edgesplit_version: _Optional[str] = ..., torch_version: _Optional[str] = ..., grpc_version: _Optional[str] = ..., protobuf_version: _Optional[str] = ..., python_version: _Optional[str] = ..., clock: _Optional[float] = ..., model: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., num_units: _Optional[int] = ..., epochs: _Optional[_Iterable[_Union[EpochInfo, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., send_queue_depth: _Optional[int] = ..., processed: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[DeviceSample, _Mapping]]] = ..., failures: _Optional[_Iterable[str]] = ..., threads: _Optional[int] = ..., cpu_kind: _Optional[str] = ..., cpu_model: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., cpu_count: _Optional[int] = ..., model_sha256: _Optional[str] = ..., model_bytes_received: _Optional[int] = ..., stored_models: _Optional[_Iterable[str]] = ..., memory_budget_bytes: _Optional[int] = ..., memory_reserved_bytes: _Optional[int] = ..., rss_bytes: _Optional[int] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model", "num_classes", "in_channels", "input_size", "weights_sha256", "weights", "model_sha256", "torch_reference")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    IN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    TORCH_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    num_classes: int
    in_channels: int
    input_size: int
    weights_sha256: str
    weights: bytes
    model_sha256: str
    torch_reference: bool
    def __init__(self, model: _Optional[str] = ..., num_classes: _Optional[int] = ..., in_channels: _Optional[int] = ..., input_size: _Optional[int] = ..., weights_sha256: _Optional[str] = ..., weights: _Optional[bytes] = ..., model_sha256: _Optional[str] = ..., torch_reference: _Optional[bool] = ...) -> None: ...

class LoadModelReply(_message.Message):
    __slots__ = ("loaded", "need_weights", "num_units", "need_model")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    NEED_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    NUM_UNITS_FIELD_NUMBER: _ClassVar[int]
    NEED_MODEL_FIELD_NUMBER: _ClassVar[int]
    loaded: bool
    need_weights: bool
    num_units: int
    need_model: bool
    def __init__(self, loaded: _Optional[bool] = ..., need_weights: _Optional[bool] = ..., num_units: _Optional[int] = ..., need_model: _Optional[bool] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("sha256", "total_bytes", "offset", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    total_bytes: int
    offset: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutModelReply(_message.Message):
    __slots__ = ("stored_bytes",)
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    stored_bytes: int
    def __init__(self, stored_bytes: _Optional[int] = ...) -> None: ...

class InstallPlanRequest(_message.Message):
    __slots__ = ("epoch", "stage", "start", "end", "next_hop", "coordinator", "bandwidth_mbps", "latency_ms", "next_token", "engine", "precision", "wire", "calibration", "int8_model_sha256")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOP_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MBPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    INT8_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    stage: int
    start: int
    end: int
    next_hop: str
    coordinator: str
    bandwidth_mbps: float
    latency_ms: float
    next_token: str
    engine: str
    precision: str
    wire: str
    calibration: Tensor
    int8_model_sha256: str
    def __init__(self, epoch: _Optional[int] = ..., stage: _Optional[int] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., next_hop: _Optional[str] = ..., coordinator: _Optional[str] = ..., bandwidth_mbps: _Optional[float] = ..., latency_ms: _Optional[float] = ..., next_token: _Optional[str] = ..., engine: _Optional[str] = ..., precision: _Optional[str] = ..., wire: _Optional[str] = ..., calibration: _Optional[_Union[Tensor, _Mapping]] = ..., int8_model_sha256: _Optional[str] = ...) -> None: ...

class DropEpochRequest(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class SetLinkRequest(_message.Message):
    __slots__ = ("to", "bandwidth_mbps", "latency_ms", "clear")
    TO_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MBPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    to: str
    bandwidth_mbps: float
    latency_ms: float
    clear: bool
    def __init__(self, to: _Optional[str] = ..., bandwidth_mbps: _Optional[float] = ..., latency_ms: _Optional[float] = ..., clear: _Optional[bool] = ...) -> None: ...

class FailureReport(_message.Message):
    __slots__ = ("device", "plan_epoch", "request_id", "next_hop", "message")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PLAN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    device: str
    plan_epoch: int
    request_id: int
    next_hop: str
    message: str
    def __init__(self, device: _Optional[str] = ..., plan_epoch: _Optional[int] = ..., request_id: _Optional[int] = ..., next_hop: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("batch_size", "warmup", "repeats", "engine", "precision", "calibration", "stages", "int8_model_sha256")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    INT8_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    warmup: int
    repeats: int
    engine: str
    precision: str
    calibration: Tensor
    stages: _containers.RepeatedCompositeFieldContainer[StageSpan]
    int8_model_sha256: str
    def __init__(self, batch_size: _Optional[int] = ..., warmup: _Optional[int] = ..., repeats: _Optional[int] = ..., engine: _Optional[str] = ..., precision: _Optional[str] = ..., calibration: _Optional[_Union[Tensor, _Mapping]] = ..., stages: _Optional[_Iterable[_Union[StageSpan, _Mapping]]] = ..., int8_model_sha256: _Optional[str] = ...) -> None: ...

class StageSpan(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("start", "end", "wall_ms", "cpu_ms", "spread_ms")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    WALL_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_MS_FIELD_NUMBER: _ClassVar[int]
    SPREAD_MS_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    wall_ms: float
    cpu_ms: float
    spread_ms: float
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., wall_ms: _Optional[float] = ..., cpu_ms: _Optional[float] = ..., spread_ms: _Optional[float] = ...) -> None: ...

class ProfileReply(_message.Message):
    __slots__ = ("unit_ms", "unit_spread_ms", "rss_mb", "available_memory_mb", "cpu_count", "threads", "engine", "unit_cpu_ms", "precision", "model_ms", "model_cpu_ms", "hop_cpu_ms_per_mb", "stage_timings")
    UNIT_MS_FIELD_NUMBER: _ClassVar[int]
    UNIT_SPREAD_MS_FIELD_NUMBER: _ClassVar[int]
    RSS_MB_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    UNIT_CPU_MS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CPU_MS_FIELD_NUMBER: _ClassVar[int]
    HOP_CPU_MS_PER_MB_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMINGS_FIELD_NUMBER: _ClassVar[int]
    unit_ms: _containers.RepeatedScalarFieldContainer[float]
    unit_spread_ms: _containers.RepeatedScalarFieldContainer[float]
    rss_mb: float
    available_memory_mb: float
    cpu_count: int
    threads: int
    engine: str
    unit_cpu_ms: _containers.RepeatedScalarFieldContainer[float]
    precision: str
    model_ms: float
    model_cpu_ms: float
    hop_cpu_ms_per_mb: float
    stage_timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    def __init__(self, unit_ms: _Optional[_Iterable[float]] = ..., unit_spread_ms: _Optional[_Iterable[float]] = ..., rss_mb: _Optional[float] = ..., available_memory_mb: _Optional[float] = ..., cpu_count: _Optional[int] = ..., threads: _Optional[int] = ..., engine: _Optional[str] = ..., unit_cpu_ms: _Optional[_Iterable[float]] = ..., precision: _Optional[str] = ..., model_ms: _Optional[float] = ..., model_cpu_ms: _Optional[float] = ..., hop_cpu_ms_per_mb: _Optional[float] = ..., stage_timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class ProbeLinkRequest(_message.Message):
    __slots__ = ("address", "token", "sizes", "repeats", "bandwidth_mbps", "latency_ms")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MBPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    address: str
    token: str
    sizes: _containers.RepeatedScalarFieldContainer[int]
    repeats: int
    bandwidth_mbps: float
    latency_ms: float
    def __init__(self, address: _Optional[str] = ..., token: _Optional[str] = ..., sizes: _Optional[_Iterable[int]] = ..., repeats: _Optional[int] = ..., bandwidth_mbps: _Optional[float] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class ProbeChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ProbeStreamReply(_message.Message):
    __slots__ = ("received_bytes",)
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    received_bytes: int
    def __init__(self, received_bytes: _Optional[int] = ...) -> None: ...

class ProbeLinkReply(_message.Message):
    __slots__ = ("sizes", "median_ms")
    SIZES_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_MS_FIELD_NUMBER: _ClassVar[int]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    median_ms: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, sizes: _Optional[_Iterable[int]] = ..., median_ms: _Optional[_Iterable[float]] = ...) -> None: ...
