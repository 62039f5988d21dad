"""Helpers of the CLI reliability tests: a small int8 file, a crafted one,
and the fuzz driver (run as a child process by test_fuzz).

The driver prints `start <file>` before each file and `done <file>
<outcome>` after, flushed, so a crash by a signal names its file. Outcomes:
`ok` (inspected and run), `invalid` (refused by validate_tflite: the CLI's
exit 3), `refused` (LiteRT raised an error: exit 3 as well).
"""

import os
import sys


def small_int8_tflite(path):
    """Writes a fully int8 Conv2D + Dense digits-sized model to `path`."""
    import keras
    import numpy as np

    from tfaccel.demo import load_digits
    from tfaccel.export import export_tflite

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    x = np.asarray(load_digits()[0][:32], "float32")
    export_tflite(model, path, "int8", representative_data=x, input_type="int8",
                  verify=False)
    return path


def set_zero_point(data, tensor_name_part, value):
    """`data` with the first zero point of the named tensor set to `value`."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for tensor in model.subgraphs[0].tensors:
        if tensor_name_part in tensor.name.decode():
            zero_points = list(tensor.quantization.zeroPoint)
            zero_points[0] = value
            tensor.quantization.zeroPoint = zero_points
            break
    else:
        raise AssertionError(f"no tensor named like {tensor_name_part!r}")
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def drive(paths):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tfaccel.export import (
        InvalidTFLiteError,
        benchmark_tflite,
        inspect_tflite,
        validate_tflite,
    )

    for path in paths:
        print(f"start {path}", flush=True)
        try:
            data = validate_tflite(path)
        except InvalidTFLiteError:
            outcome = "invalid"
        else:
            try:
                inspect_tflite(data)
                benchmark_tflite(data, threads=[1], runs=1, warmup=0)
                outcome = "ok"
            except (ValueError, RuntimeError):
                outcome = "refused"
        print(f"done {path} {outcome}", flush=True)


if __name__ == "__main__":
    drive(sys.argv[1:])


def crash_writing(args, path, progress):
    """A stand-in for `tfaccel.cli.export.convert` that dies mid-write."""
    with open(path, "wb") as f:
        f.write(b"half a flatbuffer")
    os.abort()
