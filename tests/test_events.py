"""The vectorized CRC-32C and the record writer that uses it: the same bytes as tensorboard's."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter

from lightning_lyapunov._events import BLOCK, FastRecordWriter, crc32c, masked_crc32c, speed_up


def test_the_known_check_values() -> None:
    # the CRC-32C check value (RFC 3720, iSCSI) and the empty message
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert crc32c(bytes([0xFF] * 32)) == 0x62A8AB43  # RFC 3720 B.4: 32 bytes of ones


@pytest.mark.parametrize("length", [1, 3, 4, 5, 63, 64, 65, 1000, BLOCK - 1, BLOCK, BLOCK + 1, BLOCK + 3,
                                    BLOCK + 4, 2 * BLOCK, 3 * BLOCK + 517, 50_000])
def test_every_length_matches_tensorboard(length: int) -> None:
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    assert masked_crc32c(data) == tensorboard_masked_crc32c(data)


def test_the_record_bytes_are_tensorboards() -> None:
    data = np.random.default_rng(0).integers(0, 256, 1500, dtype=np.uint8).tobytes()
    theirs, ours = io.BytesIO(), io.BytesIO()
    RecordWriter(theirs).write(data)
    FastRecordWriter(ours).write(data)
    assert ours.getvalue() == theirs.getvalue()
    assert struct.unpack("<Q", ours.getvalue()[:8]) == (1500,)


def test_speed_up_swaps_the_writer_and_the_file_reads_back(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    writer = SummaryWriter(str(tmp_path))
    assert speed_up(writer) is True
    async_writer = writer._get_file_writer().event_writer._async_writer
    assert type(async_writer._writer) is FastRecordWriter
    assert async_writer._worker._record_writer is async_writer._writer
    assert speed_up(writer) is True  # the second call changes nothing
    for step in range(3):
        writer.add_scalar("a", float(step), step)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    # the loader checks every record's CRC (a wrong one raises DataLossError)
    events = list(EventFileLoader(str(path), detect_file_replacement=False).Load())
    steps = [event.step for event in events if event.HasField("summary")]
    assert steps == [0, 1, 2]


def test_speed_up_leaves_an_unknown_writer_alone() -> None:
    class Other:
        pass

    assert speed_up(Other()) is False


def _summaries(path) -> list[tuple[int, float, list[tuple[str, float]]]]:
    """(step, wall time, [(tag, value)]) of the summary events in the event file under ``path``; the
    loader checks every record's CRC."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    (file,) = path.glob("events.out.tfevents.*")
    events = map(Event.FromString, RawEventFileLoader(str(file), detect_file_replacement=False).Load())
    return [(e.step, e.wall_time, [(v.tag, v.simple_value) for v in e.summary.value]) for e in events
            if e.HasField("summary")]


def test_scalars_are_handed_over_once_a_second_and_the_rest_at_close_and_read_back(tmp_path) -> None:
    from lightning_lyapunov._events import add_scalars

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock, writer = Clock(), SummaryWriter(str(tmp_path))
    speed_up(writer)
    async_writer = writer._get_file_writer().event_writer._async_writer
    async_writer._writer.handed = 0.0
    handed = []
    put = async_writer._byte_queue.put
    async_writer._byte_queue.put = lambda item, *args, **kwargs: handed.append(item) or put(item, *args, **kwargs)
    for step in range(5):
        clock.now += 0.3  # handed over with the step that finds 1 s passed (the fourth), the fifth kept
        add_scalars(writer, {"a": float(step), "b": -step / 2}, step, clock=clock)
    assert [type(item).__name__ for item in handed] == ["Framed"]
    assert len(async_writer._writer.kept) == 1
    writer.close()  # its last flush writes the kept one
    read = _summaries(tmp_path)
    assert [step for step, _, _ in read] == [0, 1, 2, 3, 4]
    assert [values for _, _, values in read] == [[("a", float(s)), ("b", -s / 2)] for s in range(5)]
    assert all(abs(wall - time.time()) < 60 for _, wall, _ in read)  # the wall time of each add


def test_framed_records_are_written_as_they_are() -> None:
    from lightning_lyapunov._events import Framed, frame

    data = np.random.default_rng(1).integers(0, 256, 700, dtype=np.uint8).tobytes()
    theirs, ours = io.BytesIO(), io.BytesIO()
    RecordWriter(theirs).write(data)
    RecordWriter(theirs).write(data[:5])
    FastRecordWriter(ours).write(Framed(frame(data) + frame(data[:5])))
    assert ours.getvalue() == theirs.getvalue()


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**40])
def test_a_scalar_event_is_the_bytes_protobuf_serializes(step: int) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    from lightning_lyapunov import _events
    from lightning_lyapunov._events import scalar_event

    def expected(scalars: dict[str, float], wall_time: float) -> bytes:
        return Event(wall_time=wall_time, step=step, summary=Summary(value=[
            Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()])).SerializeToString()

    rng = np.random.default_rng(step)
    scalars = {f"run-lyapunov/kurtosis_median/layer.{i}" + "x" * i: float(v)  # tags of 1- and 2-byte lengths
               for i, v in enumerate(rng.standard_normal(140) * 10.0 ** rng.integers(-44, 37, 140))}
    scalars |= {"é/ü": -0.0, "inf": float("inf"), "nan": float("nan")}
    for wall_time in (0.0, 1765432101.25):
        _events._value_heads.cache_clear()
        assert scalar_event(scalars, step, wall_time) == expected(scalars, wall_time)  # encoded here
        assert _events._value_heads.cache_info().misses == 1
        beyond = scalars | {"big": 1e300}  # beyond float32 (protobuf: infinite): protobuf's own path
        assert scalar_event(beyond, step, wall_time) == expected(beyond, wall_time)
