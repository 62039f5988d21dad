"""Distill a small digits CNN from a larger one, inside `fit`.

A teacher CNN (16 and 32 filters) is trained on scikit-learn's real digits;
then a student with 19x fewer parameters (1 and 2 filters) is trained twice
from the same initial weights: alone on the labels, and with `tfaccel.distillation.distill`
(soft targets at temperature 2, `alpha=0.5` on the hard labels). The teacher
is frozen and runs in inference mode; with `cache_teacher=True` it runs once
per `fit` instead of once per epoch (fine here: NumPy data, no augmentation).

```python
from tfaccel.distillation import distill

distiller = distill(student, teacher, temperature=2.0, alpha=0.5,
                    cache_teacher=True)
distiller.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
distiller.fit(x_train, y_train, epochs=10)
distiller.student.save("saved_models/digits_student.keras")
```

Run it (artifacts go to `saved_models/` or `--out-dir`):

```
python examples/distillation.py --epochs 10
```

`TFACCEL_EXAMPLE_EPOCHS` and `TFACCEL_EXAMPLE_OUT_DIR` set the defaults of
`--epochs` and `--out-dir` (the test suite uses them). With few epochs and
one seed the comparison is noisy; the project benchmarks average seeds.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tfaccel.demo import digits_cnn, load_digits  # noqa: E402

TEACHER_FILTERS = (16, 32)
STUDENT_FILTERS = (1, 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int,
                        default=int(os.environ.get("TFACCEL_EXAMPLE_EPOCHS", "10")))
    parser.add_argument("--out-dir",
                        default=os.environ.get("TFACCEL_EXAMPLE_OUT_DIR", "saved_models"))
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of the hard-label loss (default: %(default)s)")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)

    from tfaccel.distillation import distill
    from tfaccel.export import export_tflite

    x_train, y_train, x_test, y_test = load_digits()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    keras.utils.set_random_seed(0)
    teacher = digits_cnn(TEACHER_FILTERS, "teacher")
    teacher.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    teacher.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    _, teacher_acc = teacher.evaluate(x_test, y_test, verbose=0)
    teacher.trainable = False  # distill() would freeze it (with a warning)

    keras.utils.set_random_seed(1)
    alone = digits_cnn(STUDENT_FILTERS, "student_alone")
    initial = alone.get_weights()
    alone.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    alone.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    _, alone_acc = alone.evaluate(x_test, y_test, verbose=0)

    keras.utils.set_random_seed(1)
    student = digits_cnn(STUDENT_FILTERS, "student")
    student.set_weights(initial)  # same start as the student trained alone
    distiller = distill(student, teacher, temperature=args.temperature,
                        alpha=args.alpha, cache_teacher=True)
    distiller.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    distiller.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    trained = distiller.student
    trained.compile(loss=loss, metrics=["accuracy"])
    _, distilled_acc = trained.evaluate(x_test, y_test, verbose=0)

    rows = [
        (f"teacher ({teacher.count_params():,} params)", teacher_acc),
        (f"student alone ({alone.count_params():,} params)", alone_acc),
        ("student distilled (same start)", distilled_acc),
    ]
    for label, accuracy in rows:
        print(f"{label:<32} test accuracy {accuracy:.2%}")

    path = os.path.join(args.out_dir, "digits_student.keras")
    trained.save(path)
    report = export_tflite(trained, os.path.join(args.out_dir, "digits_student.tflite"),
                           verification_data=x_test)
    print(f"saved {path}; TFLite {report.bytes:,} bytes, "
          f"agreement with Keras {report.agreement:.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
